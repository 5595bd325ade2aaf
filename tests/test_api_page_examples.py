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


STREAMING = ("/chat", "/complete", "/load_model", "/convert_to_gguf", "/compare")


def test_streaming_endpoints_examples_submit_and_iterate(live_app):
    info = httpx.get(live_app.url + "/gradio_api/info", timeout=60).json()["named_endpoints"]
    for name in STREAMING:
        code = info[name]["code_snippets"]["python"]
        assert "job = client.submit(" in code and "for out in job:" in code, f"{name}: {code}"
        assert "const job = client.submit(" in info[name]["code_snippets"]["javascript"]
    assert "client.predict(" in info["/stats"]["code_snippets"]["python"], "a plain endpoint keeps predict"


def page_examples(url: str, shots) -> dict[str, str]:
    """The Python examples as the "Use via API" page shows them, by the api_name each one calls."""
    from tests.test_browser import ARGS, CHROMIUM

    sync_api = pytest.importorskip("playwright.sync_api")
    import re

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")
            page.get_by_role("button", name="Use via API").click()
            page.wait_for_selector("pre:has-text('api_name=\"/chat\"')", state="attached")
            page.get_by_text('api_name="/chat"').first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "api_page.png"))
            texts = page.locator("pre").evaluate_all("els => els.map(e => e.textContent)")
        finally:
            browser.close()
    out = {}
    for text in texts:
        found = re.search(r'api_name="(/[a-z_]+)"', text)
        if text.strip().startswith("from gradio_client import Client") and found:
            out.setdefault(found.group(1), text.strip())
    return out


def test_the_pages_own_python_examples_run_when_pasted(live_app, shots):
    """/chat (streaming) and /model_status, each exactly as the page prints it, run in a fresh
    interpreter: the stream prints several outputs, then the final one. (/complete's example has the
    same shape, checked above; running it too would only add time.)"""
    import subprocess
    import sys

    examples = page_examples(live_app.url, shots)
    assert {"/chat", "/complete", "/model_status", "/stats"} <= set(examples), sorted(examples)
    for name in ("/chat", "/model_status"):
        run = subprocess.run([sys.executable, "-c", examples[name]], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{name} failed when pasted:\n{examples[name]}\n{run.stderr[-2000:]}"
        lines = [line for line in run.stdout.splitlines() if line.strip() and not line.startswith("Loaded as API")]
        if name != "/model_status":
            assert len(lines) >= 3, f"{name} did not stream: {run.stdout[-1000:]}"
        else:
            assert "SmolLM2" in run.stdout
