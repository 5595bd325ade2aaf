"""The Chat section: streaming chatbot, stop, regenerate, clear, system prompt, sampling."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from backends.errors import InvalidRequest
from serving.chat_service import normalize_history, text_of
from serving.services import Services
from serving.zerogpu import gpu_task
from ui.edge import client_of, gradio_errors
from ui.sampling import SamplingColumn, build_sampling


@dataclass
class ChatSection:
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    clear: gr.Button
    stats: gr.Markdown
    params: list  # system prompt + sampling components, in /chat's order
    saved: gr.BrowserState
    sampling: SamplingColumn


def format_stats(stats: dict) -> str:
    if not stats:
        return ""
    parts = []
    if stats.get("ttft_s") is not None:
        parts.append(f"TTFT **{stats['ttft_s'] * 1000:.0f} ms**")
    if stats.get("tokens_per_s"):
        parts.append(f"**{stats['tokens_per_s']:.1f} tok/s**")
    if stats.get("tpot_s"):
        parts.append(f"TPOT {stats['tpot_s'] * 1000:.1f} ms")
    parts.append(f"{stats.get('prompt_tokens', 0)} prompt + {stats.get('completion_tokens', 0)} output tokens")
    parts.append(f"{stats.get('e2e_s', 0):.2f} s")
    if stats.get("finish_reason") not in (None, "stop"):
        parts.append(f"finish: {stats['finish_reason']}")
    return " · ".join(parts) + f" · {stats.get('model', '')} ({stats.get('quantization', '')})"


STATS_TITLE_MARK = "Stats:"
EXAMPLES = [["Explain what 4-bit quantization does to a language model, in three sentences."],
            ["Write a Python function that checks whether a string is a palindrome."],
            ["Give me three ideas for a weekend project with a Raspberry Pi."]]


def stats_message(stats: dict) -> dict:
    """A collapsed, titled assistant message holding one request's figures; normalize_history skips
    titled messages, so the model never sees it."""
    tps = f" · {stats['tokens_per_s']:.1f} tok/s" if stats.get("tokens_per_s") else ""
    ttft = f"TTFT {stats['ttft_s'] * 1000:.0f} ms" if stats.get("ttft_s") is not None else "no tokens"
    title = (f"{STATS_TITLE_MARK} {ttft}{tps} · {stats.get('prompt_tokens', 0)} → "
             f"{stats.get('completion_tokens', 0)} tokens · {stats.get('e2e_s', 0):.2f} s")
    return {"role": "assistant", "content": format_stats(stats), "metadata": {"title": title, "status": "done"}}


def build_chat(h: Services, slots: int = 1) -> ChatSection:
    with gr.Row():
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Chat", height=480, buttons=["copy"], elem_id="chatbot")
            with gr.Row():
                message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     lines=1, max_lines=8, elem_id="message", autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
            with gr.Row():
                regenerate = gr.Button("Regenerate", size="sm", elem_id="regenerate")
                clear = gr.Button("Clear", size="sm", elem_id="clear")
                export = gr.DownloadButton("Export JSON", size="sm", elem_id="export")
                import_ = gr.UploadButton("Import JSON", size="sm", file_types=[".json"], type="filepath",
                                          elem_id="import")
            stats = gr.Markdown(elem_id="chat-stats")
            gr.Examples(EXAMPLES, inputs=message, label="Try")
        with gr.Column(scale=2, min_width=260):
            sampling = build_sampling()
    params = sampling.params  # system prompt + sampling components, in /chat's order

    def add_user_turn(text, history):
        text = text_of(text)
        if not text.strip():
            raise gr.Error("The message is empty: type something to send.")
        return "", (history or []) + [{"role": "user", "content": text}]

    @gpu_task
    @gradio_errors
    def bot_turn(request: gr.Request, history, *params):  # request first: Gradio injects it by position
        history = list(history or [])
        if not history or history[-1].get("role") != "user":
            raise gr.Error("There is no message to answer: type one first.")
        prior, last = history[:-1], text_of(history[-1]["content"])
        for reply, stats in h.chat(last, prior, *params, endpoint="ui", client=client_of(request)):
            turn = [{"role": "assistant", "content": reply}]
            if stats:  # the final item: a small stats line under the reply (left out of the model's history)
                turn.append(stats_message(stats))
            yield history + turn, format_stats(stats)

    def drop_last_reply(history):
        history = list(history or [])
        while history and history[-1].get("role") == "assistant":  # the reply and its stats line
            history.pop()
        if not history:
            raise gr.Error("Nothing to regenerate yet.")
        return history

    private = {"api_visibility": "private"}
    model_bound = {"concurrency_id": "generate", "concurrency_limit": slots, "api_visibility": "private"}
    submit = message.submit(add_user_turn, [message, chatbot], [message, chatbot], **private).then(
        bot_turn, [chatbot, *params], [chatbot, stats], **model_bound)
    click = send.click(add_user_turn, [message, chatbot], [message, chatbot], **private).then(
        bot_turn, [chatbot, *params], [chatbot, stats], **model_bound)
    regen = regenerate.click(drop_last_reply, chatbot, chatbot, **private).then(
        bot_turn, [chatbot, *params], [chatbot, stats], **model_bound)
    stop.click(None, None, None, cancels=[submit, click, regen], **private)
    clear_ev = clear.click(lambda: ([], ""), None, [chatbot, stats], cancels=[submit, click, regen], **private)

    # The conversation survives page reloads (kept in the browser's localStorage, never on the server)
    # and can be exported: both are refreshed once per finished turn, not on every streamed token.
    saved = gr.BrowserState([], storage_key="quantlab-chat")

    def persist(history):
        history = list(history or [])
        path = Path(tempfile.mkdtemp(prefix="quantlab-chat-")) / "conversation.json"
        path.write_text(json.dumps(conversation_of(history), ensure_ascii=False, indent=2))
        return history, str(path)

    for ev in (submit, click, regen):
        ev.then(persist, chatbot, [saved, export], **private)
    stop.click(persist, chatbot, [saved, export], **private)
    clear_ev.then(persist, chatbot, [saved, export], **private)
    import_.upload(gradio_errors(import_history), import_, chatbot, **private).then(
        persist, chatbot, [saved, export], **private)
    return ChatSection(chatbot, message, send, stop, regenerate, clear, stats, params, saved, sampling)


def conversation_of(history) -> list[dict]:
    """The exportable conversation: plain {role, content} messages, without UI annotations."""
    return [{"role": m.role, "content": m.content} for m in normalize_history(history)]


def import_history(path: str) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"That file is not a JSON conversation ({type(exc).__name__}).") from exc
    if isinstance(data, dict):
        data = data.get("messages", data.get("history"))
    return [{"role": m.role, "content": m.content} for m in normalize_history(data)]
