"""The "Use via API" page's examples run when pasted: every parameter the page shows without a default
is one a caller must give, so /chat's history has one ([] = a new conversation; the page showed
``history=...``, a Python Ellipsis that gradio_client cannot send). A call naming only the message works."""

from __future__ import annotations

import httpx
import pytest
from gradio_client import Client

pytestmark = pytest.mark.slow


def test_chat_history_has_a_default_on_the_api_page(live_app):
    info = httpx.get(live_app.url + "/gradio_api/info", timeout=60).json()["named_endpoints"]["/chat"]
    history = next(p for p in info["parameters"] if p["parameter_name"] == "history")
    assert history["parameter_has_default"] and history["parameter_default"] == []


def test_a_chat_call_with_the_message_alone_answers(live_app):
    reply, stats = Client(live_app.url, verbose=False).predict("Say hello.", max_new_tokens=8, temperature=0,
                                                               api_name="/chat")
    assert reply.strip() and stats["completion_tokens"] > 0
