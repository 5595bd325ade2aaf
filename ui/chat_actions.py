"""The Chat section's handlers: a turn (send, regenerate, continue, an edited question), Stop's stats,
the message actions, the reply versions. ``ui/chat.py`` lays the section out and wires these.

Errors never reach the Chatbot: a handler that fails shows a toast (gr.Warning) and leaves its
outputs as they were (the history stays, the typed text goes back into the box). A turn runs in two
steps: ``prepare_*`` checks and says what to run (a ``TurnJob``), then ``run_turn`` shows the
reply's pieces as the chat service streams them (thinking and answer already apart).
"""

from __future__ import annotations

import functools
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
from ui.chat_turns import (STATS_TITLE_MARK, add_version, drop_versions_from, ensure_version, group_of, is_reply,
                           last_turn, replace_group, reply_text, set_version, show_version, thinking_text, title_of,
                           turn_messages, turn_of_index, turn_span, version_count)
from ui import attachments
from ui.edge import client_of

log = logging.getLogger("quantlab.ui")


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


@dataclass(frozen=True)
class TurnJob:
    """What a turn runs (``prepare_*`` makes it, ``run_turn`` streams it; a gr.State holds it
    between). ``mode``: "send", "regenerate" or "continue"; ``base``: the chat the reply goes
    after; ``k``: the turn's ordinal; ``before``: the chat as it was, put back if nothing comes;
    ``text``: the typed question, back into the box then ("" = leave the box); ``prefix`` and
    ``reasoning``: Continue's reply and thinking so far; ``id``: what Stop names."""

    mode: str
    base: list
    k: int
    before: list
    text: str = ""
    prefix: str = ""
    reasoning: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def record(self, versions, group: list[dict]) -> dict:
        """``versions`` with ``group`` as this turn's shown version: Continue changes the version on
        screen, every other mode adds one."""
        return (set_version if self.mode == "continue" else add_version)(versions, self.k, group)


@dataclass(eq=False)
class RunningTurn:
    """A streaming turn, kept until it ends so Stop can give a stopped reply its stats: its ``job``,
    the service's ``turn`` (the open stream, the note), the assistant ``group`` shown so far (None
    before anything came), ``done`` once the stream is closed."""

    job: TurnJob
    turn: Turn
    group: list[dict] | None = None
    done: threading.Event = field(default_factory=threading.Event)


class ChatActions:
    """The handlers, over the services. ``running`` keeps each streaming turn (its stream and the
    messages so far) until it ends, so Stop can give a stopped reply its stats."""

    MAX_RUNNING = 256

    def __init__(self, h: Services):
        self.h = h
        self.running: OrderedDict[str, RunningTurn] = OrderedDict()
        self.stopped: OrderedDict[str, bool] = OrderedDict()  # turns Stop was pressed for
        self._lock = threading.Lock()

    # --- step 1: what to run (outputs: job, chatbot, message box, versions) ----------------------

    def prepare_send(self, text, history, versions, files=None):
        text = text_of(text)
        paths = attachments.uploaded_paths(files)  # the attach box's files (ui/attachments.py)
        if not text.strip() and not paths:
            gr.Warning("The message is empty: type something to send.")
            return None, gr.skip(), gr.skip(), gr.skip()
        history = list(history or [])
        base = history + [attachments.user_message(text, paths)]
        k = last_turn(base)
        return TurnJob("send", base, k, history, text=text), base, "", drop_versions_from(versions, k)

    def prepare_regenerate(self, history, versions):
        history = list(history or [])
        k = last_turn(history)
        if k is None:
            gr.Warning("Nothing to regenerate yet: send a message first.")
            return None, gr.skip(), gr.skip(), gr.skip()
        versions = ensure_version(versions, history, k)
        start, _ = turn_span(history, k)
        base = history[:start + 1]
        # the old reply stays on screen until the new one streams (no empty pending bubble meanwhile)
        return TurnJob("regenerate", base, k, history), gr.skip(), gr.skip(), versions

    def prepare_continue(self, history, versions):
        history = list(history or [])
        k = last_turn(history)
        group = group_of(history, k) if k is not None else []
        prefix = reply_text(group)
        if not prefix.strip():
            gr.Warning("There is no reply to continue yet: send a message first.")
            return None, gr.skip(), gr.skip(), gr.skip()
        versions = ensure_version(versions, history, k)
        start, _ = turn_span(history, k)
        job = TurnJob("continue", history[:start + 1], k, history, prefix=prefix, reasoning=thinking_text(group))
        return job, gr.skip(), gr.skip(), versions

    def on_edit(self, history, versions, evt: gr.EditData):
        """An edited question re-runs from there; an edited reply is kept as the shown version."""
        history = [dict(m) for m in (history or [])]
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not 0 <= index < len(history):
            return None, gr.skip(), gr.skip(), gr.skip()
        message = history[index]
        new_text = text_of(evt.value)
        before = [dict(m) for m in history]
        before[index]["content"] = evt.previous_value
        if title_of(message):
            gr.Warning("Only the messages themselves can be edited (not the thinking, notes or stats).")
            return None, before, gr.skip(), gr.skip()
        if not new_text.strip():
            gr.Warning("A message cannot be empty: use Remove last to take a turn out.")
            return None, before, gr.skip(), gr.skip()
        k = turn_of_index(history, index)
        if message.get("role") == "user":
            base = history[:index] + [{"role": "user", "content": new_text}]
            return TurnJob("send", base, k, before), base, gr.skip(), drop_versions_from(versions, k)
        history[index]["content"] = new_text
        if k is not None:
            versions = set_version(versions, k, group_of(history, k))
        return None, history, gr.skip(), versions

    # --- step 2: the turn (outputs: chatbot, message box, stats line, versions, token counter) --

    def run_turn(self, job: TurnJob | None, versions, *params, request: gr.Request = None):
        if not job:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        if job.id in self.stopped:  # Stop came before the turn began: put everything back
            yield job.before, job.text or gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        turn = Turn(continue_final=job.mode == "continue", fit_context=True)
        running = RunningTurn(job, turn)
        self._remember(running)
        reasoning, content = job.reasoning, job.prefix
        finished = False
        if job.mode == "continue":
            message, files, prior = job.prefix, [], attachments.history_with_files(job.base)
        else:  # the question's attached files are read again from the upload folder (ui/attachments.py)
            message, files, prior = attachments.turn_inputs(job.base[-1], job.base[:-1])
        pieces = self.h.chat_pieces(message, prior, *params, endpoint="ui", client=client_of(request), turn=turn,
                                    files=files)
        try:
            if job.mode == "send":  # an answer is on its way (the model may first wait for a free slot)
                yield job.base + [{"role": "assistant", "content": "…"}], gr.skip(), gr.skip(), gr.skip(), gr.skip()
            for piece in pieces:
                if job.id in self.stopped:  # Stop: end here, even if Gradio has not closed us yet
                    break
                reasoning, content = reasoning + piece.reasoning, content + piece.text
                stats = piece.stats
                group = turn_messages(content, reasoning, turn.note, stats_message(stats) if stats else None,
                                      thinking_done=bool(stats) or not piece.thinking)
                running.group = group
                if not stats:
                    yield job.base + group, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                versions = job.record(versions, group)
                finished = True
                yield job.base + group, gr.skip(), format_stats(stats), versions, self._counter(stats, turn)
            if not finished:  # stopped
                pieces.close()
                if running.group is None:
                    yield job.before, job.text or gr.skip(), gr.skip(), gr.skip(), gr.skip()
                else:
                    history, line, versions, counter = self._stopped_view(running, versions)
                    yield history, gr.skip(), line, versions, counter
        except Exception as exc:
            warn(exc)
            if running.group is None:  # nothing came: the chat as it was, the typed text back in the box
                yield job.before, job.text or gr.skip(), gr.skip(), gr.skip(), gr.skip()
            else:  # part of a reply came: keep it, as the shown version
                yield job.base + running.group, gr.skip(), gr.skip(), job.record(versions, running.group), gr.skip()
            finished = True
        finally:
            pieces.close()
            running.done.set()
            if finished:
                with self._lock:
                    self.running.pop(job.id, None)

    def _counter(self, stats: dict, turn: Turn) -> str:
        return token_count(stats, turn.context_length or self.h.manager.context_length())

    def _remember(self, running: RunningTurn) -> None:
        with self._lock:
            self.running[running.job.id] = running
            while len(self.running) > self.MAX_RUNNING:
                self.running.popitem(last=False)

    def _stopped_view(self, running: RunningTurn, versions):
        """(chatbot, stats line, versions, counter) for a stopped turn: the reply as far as it got,
        its stats line marked stopped, recorded as the turn's version."""
        turn, group = running.turn, running.group
        stats = turn.stream.stats.as_dict()
        stats["finish_reason"] = "cancelled"
        if turn.note:
            stats["note"] = turn.note
        group = [m for m in group if not title_of(m).startswith(STATS_TITLE_MARK)] + [stats_message(stats)]
        group = [dict(m, metadata={**m["metadata"], "status": "done"}) if m.get("metadata") else m for m in group]
        versions = running.job.record(versions, group)
        return running.job.base + group, format_stats(stats), versions, self._counter(stats, turn)

    def finish_stopped(self, job: TurnJob | None, versions):
        """Stop: the running turn ends (even one not started yet), and the reply as far as it got is
        shown marked stopped, with its stats (outputs: chatbot, stats line, versions, counter)."""
        if not job:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        with self._lock:
            self.stopped[job.id] = True
            while len(self.stopped) > self.MAX_RUNNING:
                self.stopped.popitem(last=False)
            running = self.running.get(job.id)
        if running is None:  # not begun (it will see the flag and put things back) or already over
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        running.done.wait(5.0)  # the generator ends within a token of the flag or of Gradio's cancel
        with self._lock:
            self.running.pop(job.id, None)
        if running.turn.stream is None or running.group is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return self._stopped_view(running, versions)

    # --- message actions (no generation) ----------------------------------------------------------

    def remove_last(self, history, versions):
        """Take the last turn out; its question goes back into the box (outputs: chatbot, box, versions)."""
        history = list(history or [])
        k = last_turn(history)
        if k is None:
            gr.Warning("Nothing to remove: the chat is empty.")
            return gr.skip(), gr.skip(), gr.skip()
        start, _ = turn_span(history, k)
        return history[:start], text_of(history[start]["content"]), drop_versions_from(versions, k)

    def replace_last(self, text, history, versions):
        """The box's text becomes the last reply (outputs: chatbot, box, versions)."""
        history = list(history or [])
        text = text_of(text)
        k = last_turn(history)
        if k is None or not any(is_reply(m) for m in group_of(history, k)):
            gr.Warning("There is no reply to replace yet.")
            return gr.skip(), gr.skip(), gr.skip()
        if not text.strip():
            gr.Warning("Type the replacement reply in the message box first.")
            return gr.skip(), gr.skip(), gr.skip()
        group = [m for m in group_of(history, k) if title_of(m) and not title_of(m).startswith(STATS_TITLE_MARK)]
        group = [m for m in group if title_of(m) != "Thinking"] + [{"role": "assistant", "content": text}]
        versions = add_version(ensure_version(versions, history, k), k, group)
        return replace_group(history, k, group), "", versions

    # --- versions ---------------------------------------------------------------------------------

    @staticmethod
    def focused_turn(history, focus) -> int | None:
        last = last_turn(list(history or []))
        if isinstance(focus, int) and last is not None and 0 <= focus <= last:
            return focus
        return last

    def step_version(self, step: int):
        def step_fn(history, versions, focus):
            history = list(history or [])
            k = self.focused_turn(history, focus)
            if k is None:
                return gr.skip(), gr.skip()
            return show_version(history, versions, k, step)

        return step_fn

    @staticmethod
    def focus_on(history, evt: gr.SelectData):
        return turn_of_index(list(history or []), evt.index if isinstance(evt.index, int) else evt.index[0])

    def version_bar(self, history, versions, focus):
        """The "Reply 2/3" bar: shown for the focused turn (the last one unless a message was clicked)
        once it has more than one version."""
        k = self.focused_turn(history, focus)
        i, n = version_count(versions, k)
        if n < 2:
            return gr.Row(visible=False), ""
        last = last_turn(list(history or []))
        which = "last reply" if k == last else f"reply to message {k + 1}"
        return gr.Row(visible=True), f"Version **{i} / {n}** of the {which}"
