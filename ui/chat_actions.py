"""The Chat section's handlers: a turn (send, regenerate, continue, an edited question), Stop's stats,
the message actions, the reply versions. ``ui/chat.py`` lays the section out and wires these.

Errors never reach the Chatbot: a handler that fails shows a toast (gr.Warning) and leaves its
outputs as they were (the history stays, the typed text goes back into the box). A turn runs in two
steps: ``prepare_*`` checks and says what to run (a ``TurnJob``) and puts a pending reply node into
the conversation tree (``ui/chat_tree.py``), then ``run_turn`` starts the generation in its own
thread (``ui/chat_live.py``) and shows the reply's pieces as they come (thinking and answer already
apart). A reload or a dropped connection only closes the showing; the page that comes back shows
the same turn again (``prepare_resume``, ``resolve``).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import gradio as gr

from backends.errors import BackendError, user_message
from monitoring.contention import describe as describe_contention
from serving.chat_service import Turn
from serving.requests import text_of
from serving.services import Services
from serving.requests import CHAT_OPTIONS
from ui import chat_tree as ct
from ui import attachments
from ui.chat_live import LiveTurn, LiveTurns
from ui.chat_turns import STATS_TITLE_MARK, is_reply, last_turn, reply_text, thinking_text, title_of, turn_of_index
from ui.edge import client_of

log = logging.getLogger("quantlab.ui")

# what a reply's tree node keeps of its request's figures (the stats line's, and what an export shows)
STATS_KEPT = ("model", "quantization", "endpoint", "started_at", "queue_wait_s", "ttft_s", "tpot_s", "e2e_s",
              "tokens_per_s", "prompt_tokens", "completion_tokens", "finish_reason", "note", "cpu_contended")
SETTING_NAMES = ("system_prompt", *(o.name for o in CHAT_OPTIONS))  # /chat's order after (message, history)


def warn(exc: BaseException) -> None:
    if not isinstance(exc, BackendError):
        log.exception("unexpected error in a chat handler", exc_info=exc)
    gr.Warning(user_message(exc))


def toasting(n_outputs: int):
    """Decorate a plain handler: an error becomes a toast and every output is left unchanged."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                warn(exc)
                skipped = tuple(gr.skip() for _ in range(n_outputs))
                return skipped if n_outputs > 1 else skipped[0]

        return wrapper

    return decorate


def format_stats(stats: dict) -> str:
    if not stats:
        return ""
    parts = []
    if stats.get("finish_reason") == "cancelled":
        parts.append("**stopped**")
    if stats.get("ttft_s") is not None:
        parts.append(f"TTFT **{stats['ttft_s'] * 1000:.0f} ms**")
    if stats.get("tokens_per_s"):
        parts.append(f"**{stats['tokens_per_s']:.1f} tok/s**")
    if stats.get("tpot_s"):
        parts.append(f"TPOT {stats['tpot_s'] * 1000:.1f} ms")
    parts.append(f"{stats.get('prompt_tokens', 0)} prompt + {stats.get('completion_tokens', 0)} output tokens")
    parts.append(f"{stats.get('e2e_s', 0):.2f} s")
    if stats.get("finish_reason") not in (None, "stop", "cancelled"):
        parts.append(f"finish: {stats['finish_reason']}")
    text = " · ".join(parts) + f" · {stats.get('model', '')} ({stats.get('quantization', '')})"
    if stats.get("cpu_contended"):  # far below this model's quiet speed: say why instead of leaving a guess
        text += f"  \n⚠ {describe_contention(stats['cpu_contended'])}"
    return text + (f"  \n{stats['note']}" if stats.get("note") else "")


def stats_message(stats: dict) -> dict:
    """A collapsed, titled assistant message holding one request's figures; normalize_history skips
    titled messages, so the model never sees it."""
    tps = f" · {stats['tokens_per_s']:.1f} tok/s" if stats.get("tokens_per_s") else ""
    ttft = f"TTFT {stats['ttft_s'] * 1000:.0f} ms" if stats.get("ttft_s") is not None else "no tokens"
    stopped = "stopped · " if stats.get("finish_reason") == "cancelled" else ""
    contended = " · ⚠ CPU contended" if stats.get("cpu_contended") else ""
    title = (f"{STATS_TITLE_MARK} {stopped}{ttft}{tps} · {stats.get('prompt_tokens', 0)} → "
             f"{stats.get('completion_tokens', 0)} tokens · {stats.get('e2e_s', 0):.2f} s{contended}")
    return {"role": "assistant", "content": format_stats(stats), "metadata": {"title": title, "status": "done"}}


def token_count(stats: dict, n_ctx: int) -> str:
    """The live context counter: what the conversation now takes of the model's context."""
    used = int(stats.get("prompt_tokens", 0)) + int(stats.get("completion_tokens", 0))
    return f"{used} / {n_ctx} tokens" if n_ctx else f"{used} tokens"


def kept_stats(stats: dict | None) -> dict | None:
    return {k: stats[k] for k in STATS_KEPT if stats.get(k) is not None} if stats else None


@dataclass(frozen=True)
class TurnJob:
    """What a turn runs (``prepare_*`` makes it, ``run_turn`` streams it; a gr.State holds it
    between). ``mode``: "send", "regenerate" or "continue"; ``base``: the chat the reply goes
    after; ``k``: the turn's ordinal; ``before``: the chat as it was, put back if nothing comes;
    ``text``: the typed question, back into the box then ("" = leave the box); ``prefix`` and
    ``reasoning``: Continue's reply and thinking so far; ``id``: what Stop names and what the
    reply's tree node keeps as ``pending`` until it ends. In the tree (``ui/chat_tree.py``):
    ``node`` is the assistant node the reply goes into; ``user_node`` the question node this turn
    made ("" if none), ``restore`` the siblings shown before (put back if nothing comes)."""

    mode: str
    base: list
    k: int
    before: list
    text: str = ""
    prefix: str = ""
    reasoning: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    node: str = ""
    user_node: str = ""
    restore: tuple = ()  # (node shown before at the reply's place, at the question's place)


class ChatActions:
    """The handlers, over the services. ``live`` runs each turn's generation in its own thread
    (``ui/chat_live.py``), so a reply goes on when its page reloads and Stop can still end it."""

    MAX_STOPPED = 256

    def __init__(self, h: Services, keep_on_disconnect: bool = True):
        self.h = h
        # False where the event runs in another process (ZeroGPU): a closed event then stops its turn
        self.keep_on_disconnect = keep_on_disconnect
        self.live = LiveTurns(stats_message)
        self.stopped: OrderedDict[str, bool] = OrderedDict()  # turns Stop was pressed for
        self._lock = threading.Lock()

    @property
    def running(self) -> dict:
        """The turns generating now, by id."""
        return dict(self.live.running)

    # --- step 1: what to run (outputs: job, chatbot, message box, tree) --------------------------

    def prepare_send(self, text, history, tree, files=None):
        text = text_of(text)
        paths = attachments.uploaded_paths(files)  # the attach box's files (ui/attachments.py)
        if not text.strip() and not paths:
            gr.Warning("The message is empty: type something to send.")
            return None, gr.skip(), gr.skip(), gr.skip()
        history = list(history or [])
        tree = ct.reconcile(tree, history)
        parent = ct.last_id(tree)
        restore = ct.shown_child(tree, parent) or ""
        tree, user = ct.add_node(tree, parent, "user", [attachments.user_message(text, paths)])
        return self._new_reply(tree, user, "send", history, text=text, user_node=user, restore_user=restore)

    def _new_reply(self, tree, user: str, mode: str, before: list, text: str = "", user_node: str = "",
                   restore_user: str = ""):
        """A pending reply node after the question ``user``, and the job that fills it."""
        turn_id = uuid.uuid4().hex
        restore_reply = ct.shown_child(tree, user) or ""
        tree, node = ct.add_node(tree, user, "assistant", [], pending=turn_id)
        base = ct.history(tree)
        k = len(ct.user_ids(tree)) - 1
        job = TurnJob(mode, base, k, before, text=text, id=turn_id, node=node, user_node=user_node,
                      restore=(restore_reply, restore_user))
        shown = base if mode == "send" else gr.skip()  # Regenerate: the old reply stays until the new one streams
        return job, shown, "" if text else gr.skip(), tree

    def prepare_regenerate(self, history, tree):
        history = list(history or [])
        tree = ct.reconcile(tree, history)
        users = ct.user_ids(tree)
        if not users:
            gr.Warning("Nothing to regenerate yet: send a message first.")
            return None, gr.skip(), gr.skip(), gr.skip()
        tree = ct.select(tree, users[-1])  # the reply after the last question (not what follows it)
        return self._new_reply(tree, users[-1], "regenerate", history)

    def prepare_continue(self, history, tree):
        history = list(history or [])
        tree = ct.reconcile(tree, history)
        users = ct.user_ids(tree)
        node = ct.reply_id(tree, len(users) - 1) if users else None
        group = tree["nodes"][node]["messages"] if node else []
        prefix = reply_text(group)
        if not prefix.strip():
            gr.Warning("There is no reply to continue yet: send a message first.")
            return None, gr.skip(), gr.skip(), gr.skip()
        turn_id = uuid.uuid4().hex
        tree = ct.update_node(tree, node, pending=turn_id)
        base = ct.history(ct.update_node(tree, node, messages=[]))
        job = TurnJob("continue", base, len(users) - 1, history, prefix=prefix, reasoning=thinking_text(group),
                      id=turn_id, node=node)
        return job, gr.skip(), gr.skip(), tree

    def on_edit(self, history, tree, evt: gr.EditData):
        """An edited question becomes a new branch at its turn (the old one stays, with everything
        after it) and runs from there; an edited reply is changed in place."""
        history = [dict(m) for m in (history or [])]
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not 0 <= index < len(history):
            return None, gr.skip(), gr.skip(), gr.skip()
        message = history[index]
        new_text = text_of(evt.value)
        before = [dict(m) for m in history]
        before[index]["content"] = evt.previous_value
        tree = ct.reconcile(tree, before)
        before = ct.history(tree)  # the Chatbot hands back the edited text alone: the tree has its files
        if title_of(message):
            gr.Warning("Only the messages themselves can be edited (not the thinking, notes or stats).")
            return None, before, gr.skip(), tree
        if not new_text.strip():
            gr.Warning("A message cannot be empty: use Remove last to take a turn out.")
            return None, before, gr.skip(), tree
        nid = ct.node_at(tree, index)
        if nid is None:
            return None, before, gr.skip(), tree
        node = tree["nodes"][nid]
        if message.get("role") == "user":
            question = attachments.edited_message(node["messages"][0], new_text)  # its files stay
            tree, user = ct.add_node(tree, node["parent"], "user", [question])
            return self._new_reply(tree, user, "send", before, user_node=user, restore_user=nid)
        ids = ct.path_ids(tree)
        offset = index - sum(len(tree["nodes"][p]["messages"]) for p in ids[:ids.index(nid)])
        messages = [dict(m) for m in node["messages"]]
        messages[offset] = {**messages[offset], "content": new_text}
        tree = ct.update_node(tree, nid, messages=messages)
        return None, ct.history(tree), gr.skip(), tree

    def prepare_resume(self, tree):
        """After a reload or a switch: the job of a reply still generating on the visible path (the
        follow step then shows it streaming), else None (outputs: job, chatbot, box, tree)."""
        tree = ct.valid_tree(tree)
        for nid in ct.path_ids(tree):
            live = self.live.get(tree["nodes"][nid].get("pending"))
            if live is not None:
                return live.job, gr.skip(), gr.skip(), gr.skip()
        return None, gr.skip(), gr.skip(), gr.skip()

    def resolve(self, tree):
        """``tree`` with its pending replies brought up to date: an ended one gets its messages
        (pending cleared), a running one what it has so far, a forgotten one (the server restarted
        or its result expired) is taken out, its question kept."""
        tree = ct.valid_tree(tree)
        for nid in ct.pending_ids(tree):
            live = self.live.get(tree["nodes"][nid]["pending"])
            if live is None:
                tree = self._undo(tree, nid, None)
            elif not live.ended:
                if live.group is not None:
                    tree = ct.update_node(tree, nid, messages=live.group)
            elif live.group is None:
                tree = self._undo(tree, nid, live.job)
            else:
                tree = ct.update_node(tree, nid, messages=live.group, stats=kept_stats(live.stats),
                                      settings=live.settings or None, pending=None)
        return tree

    # --- step 2: the turn (outputs: chatbot, message box, stats line, tree, token counter) -------

    def run_turn(self, job: TurnJob | None, tree, *params, request: gr.Request = None):
        if not job:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        tree = ct.valid_tree(tree)
        live = self.live.get(job.id)
        if live is None:
            if job.id in self.stopped:  # Stop came before the turn began: put everything back
                tree = self._undo(tree, job.node, job)
                yield ct.history(tree), job.text or gr.skip(), gr.skip(), tree, gr.skip()
                return
            turn = Turn(continue_final=job.mode == "continue", fit_context=True)
            if job.mode == "continue":
                message, files, prior = job.prefix, [], attachments.history_with_files(job.base)
            else:  # the question's attached files are read again from the upload folder (ui/attachments.py)
                message, files, prior = attachments.turn_inputs(job.base[-1], job.base[:-1])
            pieces = self.h.chat_pieces(message, prior, *params, endpoint="ui", client=client_of(request), turn=turn,
                                        files=files)
            live = self.live.start(job, turn, pieces, dict(zip(SETTING_NAMES, params)))
        yield from self._follow(live, tree)

    def _follow(self, live: LiveTurn, tree):
        """Show ``live`` as it streams, then its end. Closed by Gradio (a reload, a dropped
        connection, Stop), it leaves the turn running: only Stop (``finish_stopped``) ends it."""
        job = live.job
        head = self._head(tree, job)
        self.live.attach(live)
        delivered = False
        try:
            if not live.ended:
                shown = head + (live.group if live.group is not None else
                                [{"role": "assistant", "content": "…"}] if job.mode == "send" else [])
                first = shown if live.group is not None or job.mode == "send" else gr.skip()
                yield first, gr.skip(), "Generating…", gr.skip(), gr.skip()
            seen = live.seq
            while not live.ended:
                seq = live.wait_change(seen, 0.5)
                if seq == seen or live.ended:
                    continue
                seen = seq
                if live.group is not None:
                    yield head + live.group, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            delivered = True
            yield self._final(live, tree)
        finally:
            if not delivered:
                if self.keep_on_disconnect:
                    self.live.detach(live)
                else:
                    live.cancel()

    def _head(self, tree, job: TurnJob) -> list:
        """The visible messages before the reply node (the job's base if the node is not shown)."""
        ids = ct.path_ids(tree)
        if job.node not in ids:
            return list(job.base)
        return [m for nid in ids[:ids.index(job.node)] for m in tree["nodes"][nid]["messages"]]

    def _final(self, live: LiveTurn, tree):
        """(chatbot, box, stats line, tree, counter) for an ended turn."""
        job = live.job
        if live.state == "failed":
            warn(live.error)
        if live.group is None:  # nothing came: the chat as it was, the typed text back in the box
            tree = self._undo(tree, job.node, job)
            return ct.history(tree), job.text or gr.skip(), gr.skip(), tree, gr.skip()
        tree = ct.update_node(tree, job.node, messages=live.group, stats=kept_stats(live.stats),
                              settings=live.settings or None, pending=None)
        if live.stats is None:  # failed part-way: the reply kept as far as it got
            return ct.history(tree), gr.skip(), gr.skip(), tree, gr.skip()
        return ct.history(tree), gr.skip(), format_stats(live.stats), tree, self._counter(live.stats, live.turn)

    @staticmethod
    def _undo(tree, nid: str, job: TurnJob | None):
        """Take a reply that never came out of the tree: Continue's reply is left as it was; a new
        reply goes (with the question this turn made), the versions shown before come back."""
        node = tree["nodes"].get(nid)
        if node is None:
            return tree
        if job is not None and job.mode == "continue" or (job is None and node["messages"]):
            return ct.update_node(tree, nid, pending=None)
        restore_reply, restore_user = job.restore if job is not None else ("", "")
        tree = ct.remove_node(tree, nid, select=restore_reply or None)
        if job is not None and job.user_node:
            tree = ct.remove_node(tree, job.user_node, select=restore_user or None)
        return tree

    def _counter(self, stats: dict, turn: Turn) -> str:
        return token_count(stats, turn.context_length or self.h.manager.context_length())

    def finish_stopped(self, job: TurnJob | None, tree):
        """Stop: the running turn ends (even one not started yet), and the reply as far as it got is
        shown marked stopped, with its stats (outputs: chatbot, stats line, tree, counter)."""
        if not job:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        with self._lock:
            self.stopped[job.id] = True
            while len(self.stopped) > self.MAX_STOPPED:
                self.stopped.popitem(last=False)
        live = self.live.get(job.id)
        if live is None:  # not begun: it will see the flag and put things back
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        live.cancel()
        with live.cond:  # the model stops within a token of the flag
            live.cond.wait_for(lambda: live.ended, timeout=5.0)
        if not live.ended:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        history, _, line, tree, counter = self._final(live, ct.valid_tree(tree))
        return history, line, tree, counter

    def drop_running(self, job: TurnJob | None) -> None:
        """Clear, Remove last, Delete: the reply still generating for this page is not wanted any more."""
        if job:
            with self._lock:
                self.stopped[job.id] = True
            live = self.live.get(job.id)
            if live is not None:
                live.cancel()

    # --- message actions (no generation) ----------------------------------------------------------

    def remove_last(self, history, tree):
        """Take the last question (and what follows it) out; it goes back into the box. If it had
        other versions, the one before it is shown (outputs: chatbot, box, tree)."""
        tree = ct.reconcile(tree, list(history or []))
        users = ct.user_ids(tree)
        if not users:
            gr.Warning("Nothing to remove: the chat is empty.")
            return gr.skip(), gr.skip(), gr.skip()
        text = text_of(tree["nodes"][users[-1]]["messages"][0]["content"])
        tree = ct.remove_node(tree, users[-1])
        return ct.history(tree), text, tree

    def replace_last(self, text, history, tree):
        """The box's text becomes the last reply, as a new version of it (outputs: chatbot, box, tree)."""
        tree = ct.reconcile(tree, list(history or []))
        users = ct.user_ids(tree)
        node = ct.reply_id(tree, len(users) - 1) if users else None
        text = text_of(text)
        if node is None or not any(is_reply(m) for m in tree["nodes"][node]["messages"]):
            gr.Warning("There is no reply to replace yet.")
            return gr.skip(), gr.skip(), gr.skip()
        if not text.strip():
            gr.Warning("Type the replacement reply in the message box first.")
            return gr.skip(), gr.skip(), gr.skip()
        group = [m for m in tree["nodes"][node]["messages"] if title_of(m) and not title_of(m).startswith(STATS_TITLE_MARK)]
        group = [m for m in group if title_of(m) != "Thinking"] + [{"role": "assistant", "content": text}]
        tree, _ = ct.add_node(tree, users[-1], "assistant", group)
        return ct.history(tree), "", tree

    # --- versions and branches --------------------------------------------------------------------

    @staticmethod
    def focused_turn(history, focus) -> int | None:
        last = last_turn(list(history or []))
        if isinstance(focus, int) and last is not None and 0 <= focus <= last:
            return focus
        return last

    def step_version(self, step: int):
        """The bar's ◀ ▶: the focused turn's reply (outputs: chatbot, tree, stats line)."""

        def step_fn(history, tree, focus):
            tree = ct.reconcile(tree, list(history or []))
            if self._busy(tree):
                return gr.skip(), gr.skip(), gr.skip()
            nid = ct.reply_id(tree, self._bar_turn(tree, history, focus))
            if nid is None:
                return gr.skip(), gr.skip(), gr.skip()
            tree = ct.step(tree, nid, step)
            return ct.history(tree), tree, self.stats_line(tree, ct.shown_child(tree, tree["nodes"][nid]["parent"]))

        return step_fn

    def switch_branch(self, command, tree):
        """A message's own ◀ ▶ (the page sends "<node id> <-1|1>"): show that sibling and its whole
        continuation (outputs: chatbot, tree, stats line)."""
        parts = str(command or "").split()
        tree = ct.valid_tree(tree)
        if len(parts) != 2 or parts[0] not in tree["nodes"] or parts[1] not in ("-1", "1"):
            return gr.skip(), gr.skip(), gr.skip()
        if self._busy(tree):
            return gr.skip(), gr.skip(), gr.skip()
        node = tree["nodes"][parts[0]]
        tree = ct.step(tree, parts[0], int(parts[1]))
        return ct.history(tree), tree, self.stats_line(tree, ct.shown_child(tree, node["parent"]))

    @staticmethod
    def _busy(tree) -> bool:
        """A reply is still coming: the versions stay as they are until it ends (or Stop)."""
        if ct.pending_ids(tree):
            gr.Warning("A reply is still coming: switch versions once it ends (or press Stop).")
            return True
        return False

    @staticmethod
    def stats_line(tree, nid: str | None) -> str:
        """The stats line for the version now shown at ``nid``: its own stats if it is a reply,
        else those of the first reply after it; "" when that reply has none."""
        ids = ct.path_ids(tree)
        for other in ids[ids.index(nid):] if nid in ids else []:
            node = tree["nodes"][other]
            if node["role"] == "assistant":
                return format_stats(node.get("stats") or {})
        return ""

    @staticmethod
    def focus_on(history, evt: gr.SelectData):
        return turn_of_index(list(history or []), evt.index if isinstance(evt.index, int) else evt.index[0])

    def _bar_turn(self, tree, history, focus) -> int | None:
        """The turn the bar shows: the clicked one if its reply has versions, else the last one."""
        k = self.focused_turn(history, focus)
        if ct.turn_version(tree, k)[1] < 2:
            return self.focused_turn(history, None)
        return k

    def version_bar(self, history, tree, focus):
        """The "Version 2 / 3" bar under the chat (the clicked turn's reply, or the last one) and the
        per-message ◀ n/m ▶ arrows' map (outputs: bar row, its label, the map)."""
        tree = ct.reconcile(tree, list(history or []))
        arrows = json.dumps(ct.row_map(tree))
        k = self._bar_turn(tree, history, focus)
        i, n = ct.turn_version(tree, k)
        if n < 2:
            return gr.Row(visible=False), "", arrows
        last = last_turn(list(history or []))
        which = "last reply" if k == last else f"reply to message {k + 1}"
        return gr.Row(visible=True), f"Version **{i} / {n}** of the {which}", arrows
