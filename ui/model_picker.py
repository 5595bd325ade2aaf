"""The chat's model picker: which model answers this conversation. Its value is /chat's last
parameter (``model``: "" = the chat's model, else a name from GET /v1/models), so it is saved with
each past chat like the sampling settings, and a conversation reopened answers with its model."""

from __future__ import annotations

import gradio as gr

from serving.model_names import model_rows
from serving.services import Services

CHAT_MODEL = ""  # the picker's value for "the chat's model" (whatever /load_model loaded)


def picker_choices(h: Services, keep: str | None = None) -> list[tuple[str, str]]:
    """(label, value) per servable model: the chat's model first, then every name the server serves
    by name (with --models-dir: the pool's, loaded on the first request), each with its status;
    ``keep``: a value to keep offering (a past chat's model no longer listed)."""
    cur = h.manager.current
    # built with the page, maybe before the model loads: then the label names no model (it would go stale)
    choices = [(f"Chat model ({cur.name})" if cur else "Chat model (whichever is loaded)", CHAT_MODEL)]
    for row in model_rows(h.manager):
        if h.manager.pool is None or (cur is not None and row["id"] == cur.name):
            continue  # the chat's model is the first choice
        status = row.get("status", "loaded")
        choices.append((row["id"] + ("" if status == "loaded" else f" · {status}"), row["id"]))
    if keep and keep not in {value for _, value in choices}:
        choices.append((f"{keep} · not listed", keep))
    return choices


def build_model_picker(h: Services) -> gr.Dropdown:
    """The dropdown (its list refreshed whenever it is opened)."""
    picker = gr.Dropdown(picker_choices(h), value=CHAT_MODEL, label="Model", elem_id="chat-model",
                         allow_custom_value=True,
                         info="Which model answers this chat (remembered with it); the pool loads one on demand")
    picker.focus(lambda value: gr.update(choices=picker_choices(h, value)), picker, picker,
                 api_visibility="private", queue=False)
    return picker
