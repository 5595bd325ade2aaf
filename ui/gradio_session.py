"""Gradio sessions that do not render every component's config up front (issue 16: REST /chat TTFT).

Gradio 6.31's ``SessionState.__init__`` computes ``config_for_block`` for every block of the app, to
have them ready should the session be turned into a deep link. Every call of the Gradio REST API
(``POST /gradio_api/call/<api>``) gets a new session, so on this app (285 blocks) each /chat call
spent 12-14 ms there before the handler started: most of the TTFT that Gradio's REST path added over
the raw engine (+19 to +27 ms measured, goal 20 ms).

Here a session of a patched Blocks starts with no configs; each is computed when first needed, from
the same block objects: when a value is written (Gradio's own ``_update_value_in_config`` already
fills a missing key that way) or when ``components`` (the deep-link view) is read, which fills in every
missing block first, in the app's block order, so it returns what the eager version would have.
Applied only to the Gradio version it was written against, and only to the Blocks passed in; other
Blocks in the process (and other Gradio versions) keep Gradio's behaviour.
"""

from __future__ import annotations

import copy
import os

PATCHED_VERSION = "6.31.0"
_FLAG = "_quantlab_lazy_session_config"


def lazy_session_config(blocks) -> bool:
    """Sessions of ``blocks`` compute block configs on demand. Returns whether the patch is active."""
    import gradio
    from gradio.state_holder import SessionState

    if gradio.__version__ != PATCHED_VERSION:
        return False
    setattr(blocks, _FLAG, True)
    if getattr(SessionState, _FLAG, False):
        return True
    eager_init = SessionState.__init__
    eager_components = SessionState.components

    def __init__(self, blocks_) -> None:
        if not getattr(blocks_, _FLAG, False):
            eager_init(self, blocks_)
            return
        # Gradio 6.31's __init__, less the loop over every block's config
        self.blocks_config = copy.copy(blocks_.default_config)
        self.config_values = {}
        self.state_data = {}
        self._state_ttl = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600
        self._lazy_ids = [k for k in self.blocks_config.blocks if k in blocks_.blocks]

    def components(self):
        lazy_ids = getattr(self, "_lazy_ids", None)
        if lazy_ids is not None:  # fill in what was never computed, keeping the app's block order
            done = self.config_values
            self.config_values = {k: done[k] if k in done else
                                  self.blocks_config.config_for_block(k, [], self.blocks_config.blocks[k])
                                  for k in lazy_ids if k in self.blocks_config.blocks}
            self.config_values.update({k: v for k, v in done.items() if k not in self.config_values})
            self._lazy_ids = None
        return eager_components.fget(self)

    SessionState.__init__ = __init__
    SessionState.components = property(components)
    setattr(SessionState, _FLAG, True)
    return True
