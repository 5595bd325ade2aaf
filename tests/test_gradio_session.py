"""Gradio sessions of the app's Blocks compute component configs on demand (ui/gradio_session.py): a
REST call no longer renders all of them before its handler starts, and what a deep link reads
(``components``) is what Gradio's eager session would have held."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from ui.gradio_session import PATCHED_VERSION, lazy_session_config

pytestmark = pytest.mark.skipif(gr.__version__ != PATCHED_VERSION, reason="the patch targets Gradio " + PATCHED_VERSION)


def demo() -> gr.Blocks:
    with gr.Blocks() as blocks:
        name = gr.Textbox(value="Ada", label="Name")
        count = gr.Slider(0, 10, value=3, label="Count")
        gr.State({"turns": 1})
        with gr.Row():
            gr.Markdown("hello")
            out = gr.Textbox(label="Out")
        gr.Button("Go").click(lambda n, c: f"{n} {c}", [name, count], out)
    return blocks


def eager(blocks) -> SessionState:
    flag = blocks.__dict__.pop("_quantlab_lazy_session_config", None)
    try:
        return SessionState(blocks)
    finally:
        if flag is not None:
            blocks._quantlab_lazy_session_config = flag


def test_a_new_session_renders_no_config_until_asked():
    blocks = demo()
    assert lazy_session_config(blocks)
    session = SessionState(blocks)
    assert session.config_values == {}
    assert set(eager(blocks).config_values) == set(blocks.blocks)  # what Gradio renders up front


def test_the_deep_link_view_equals_gradios_eager_session():
    blocks = demo()
    lazy_session_config(blocks)
    lazy, full = SessionState(blocks), eager(blocks)
    assert list(lazy.components) == list(full.components)
    # a value written by an event shows in both, in the same place
    textbox_id = next(k for k, b in blocks.blocks.items() if getattr(b, "label", None) == "Out")
    for session in (lazy, full):
        session._update_value_in_config(textbox_id, "Ada 3")
    assert list(lazy.components) == list(full.components)
    assert any(c.get("props", {}).get("value") == "Ada 3" for c in lazy.components)


def test_other_blocks_in_the_process_keep_gradios_behaviour():
    patched, other = demo(), demo()
    lazy_session_config(patched)
    assert SessionState(other).config_values  # eager, as Gradio made it
    assert SessionState(patched).config_values == {}
