"""End to end in a real headless Chromium (Debian's package, driven by Playwright): what a person
does in the UI. Screenshots go to $QUANTLAB_SCREENSHOTS (the README's come from here) or a tmp dir."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# In CI (QUANTLAB_REQUIRE_E2E=1, set by .ci/run) a missing browser fails the run instead of skipping.
REQUIRED = os.environ.get("QUANTLAB_REQUIRE_E2E") == "1"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not REQUIRED and not Path(CHROMIUM).exists(),
    reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")]


@pytest.fixture(scope="module")
def app_url(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))
        yield srv.url


@pytest.fixture(scope="module")
def page(app_url):
    if REQUIRED:
        assert Path(CHROMIUM).exists(), "QUANTLAB_REQUIRE_E2E=1 but Chromium is not installed"
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 960})
        pg.set_default_timeout(60_000)
        pg.goto(app_url)
        pg.wait_for_selector("#message textarea")
        pg.wait_for_selector("#model-badge :text('Serving')")  # the page's load events have run
        yield pg
        browser.close()


REPLY_JS = "(document.querySelector('#chatbot .bot .message-content')?.innerText || '').replace('Loading content', '')"


def bot_text(page) -> str:
    """The first reply's own text (not its stats line)."""
    replies = page.locator("#chatbot .bot .message-content")
    text = replies.first.inner_text() if replies.count() else ""
    return "" if text == "Loading content" else text  # Gradio's placeholder before the first token


def set_greedy(page) -> None:
    """Temperature 0: a sampled reply may end after a few tokens, which the streaming checks cannot use."""
    box = page.locator("input[aria-label='number input for Temperature (0 = greedy)']")
    box.fill("0")
    box.press("Enter")


def test_send_see_the_reply_grow_and_stop(page, shots):
    set_greedy(page)
    page.fill("#message textarea", "Count from 1 to 200, separated by commas.")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => {REPLY_JS}.length > 5")
    lengths = []
    for _ in range(6):
        lengths.append(len(bot_text(page)))
        time.sleep(0.25)
    assert lengths[-1] > lengths[0], f"the reply does not grow while streaming: {lengths} {bot_text(page)!r}"
    page.click("#stop")
    time.sleep(0.8)
    stopped = len(bot_text(page))
    time.sleep(1.0)
    assert len(bot_text(page)) == stopped, "the reply kept growing after Stop"
    page.screenshot(path=str(shots / "chat.png"))


def test_a_normal_chat_shows_its_stats_and_survives_a_reload(page, shots):
    page.click("#clear")
    # the clear has landed (no reply, no stats line of the last test's reply) before the new question goes
    page.wait_for_function("() => !document.querySelector('#chatbot .bot') && "
                           "!(document.querySelector('#chat-stats') || {innerText: ''}).innerText.includes('tok/s')")
    saved_before = page.evaluate("() => localStorage.getItem('quantlab-chat')")
    page.fill("#message textarea", "Write a haiku about the sea.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#chat-stats :text('tok/s')")
    reply = bot_text(page)
    assert reply.strip()
    page.screenshot(path=str(shots / "chat-stats.png"))
    # the finished turn is saved in the browser (one step after the reply): then reload
    page.wait_for_function("(b) => localStorage.getItem('quantlab-chat') !== b", arg=saved_before)
    page.reload()
    page.wait_for_selector("#message textarea")
    page.wait_for_selector("#model-badge :text('Serving')")
    page.wait_for_function(f"() => {REPLY_JS}.length > 0")
    assert "haiku" in page.locator("#chatbot").inner_text()


def test_load_another_quantization_and_see_the_monitor_update_live(page, shots, app_url):
    page.get_by_role("tab", name="Model").click()
    quant = page.locator("input[aria-label='Quantization']")
    quant.fill("Q8_0")
    quant.press("Enter")
    page.click("#load")
    page.wait_for_selector("#model-current :text('Q8_0')", timeout=120_000)
    # every page's model line follows a load within 2 s, so it may show Q8_0 before the status box's last line
    page.wait_for_function("() => document.querySelector('#load-status textarea').value.includes('Loaded')",
                           timeout=30_000)
    page.screenshot(path=str(shots / "model.png"))
    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_selector("#monitor-figures :text('Q8_0')")
    figures = page.locator("#monitor-figures").inner_text()
    assert "RSS" in figures
    done = int(re.search(r"(\d+) done", figures).group(1))
    # a request from another client shows up without touching the page: the timer refreshes it
    httpx.post(app_url + "/v1/chat/completions", timeout=60,
               json={"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    page.wait_for_selector(f"#monitor-figures :text('{done + 1} done')", timeout=10_000)
    page.screenshot(path=str(shots / "monitor.png"))


def user_turns(page) -> int:
    return page.locator("#chatbot .user .message-content").count()


def clear_chat(page) -> None:
    page.click("#clear")
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 0"
                           " && !document.querySelector('#chat-stats').innerText.includes('tok/s')")


def test_regenerate_replaces_the_last_reply_and_keeps_the_question(page, shots):
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    page.fill("#message textarea", "Give me one word that rhymes with cat.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#chat-stats :text('tok/s')")
    assert user_turns(page) == 1 and bot_text(page).strip()
    before = page.locator("#chat-stats").inner_text()
    page.click("#regenerate")
    # the new reply is the turn's second version, shown once it has its own stats line (its timings differ)
    page.wait_for_selector("#version-label :text('2 / 2')", timeout=120_000)
    page.wait_for_function("(b) => { const t = document.querySelector('#chat-stats').innerText;"
                           " return t.includes('tok/s') && t !== b; }", arg=before, timeout=120_000)
    page.wait_for_selector("#chatbot .bot-row :text('Stats:')")  # the chatbot renders after the stats line
    page.screenshot(path=str(shots / "regenerate.png"))
    assert user_turns(page) == 1, "Regenerate must not repeat the question"
    # one answer (with its stats line), not the old one beside the new (a sampled reply may be short)
    assert page.locator("#chatbot .bot-row").count() == 1
    assert "Stats:" in page.locator("#chatbot .bot-row").inner_text()
    assert "cat" in page.locator("#chatbot .user").first.inner_text()


def test_export_then_import_restores_the_conversation(page, tmp_path):
    import json

    with page.expect_download() as dl:
        page.click("#export")
    exported = tmp_path / "conversation.json"
    dl.value.save_as(exported)
    messages = json.loads(exported.read_text())["messages"]  # the file also keeps the chat's tree and settings
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert "rhymes with cat" in messages[0]["content"] and messages[1]["content"].strip()
    clear_chat(page)
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(exported))
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 1")
    assert "rhymes with cat" in page.locator("#chatbot").inner_text()


def test_compare_two_quantizations_side_by_side(page, shots):
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-run")
    page.wait_for_selector("#compare-divergence :text-matches('identical|diverge')", timeout=180_000)
    panes = [page.locator(f"#pane-{i}").inner_text() for i in range(2)]
    assert "llamacpp:Q8_0" in panes[0] and "llamacpp:Q4_0" in panes[1]
    assert all("tokens" in p and "MiB" in p for p in panes)
    # each pane says why it stopped and where its variant came from
    assert all(("end of text" in p or "token limit" in p) and "already quantized" in p for p in panes)
    page.screenshot(path=str(shots / "compare.png"), full_page=True)


def test_evaluate_shows_a_table_and_a_plot(page, shots):
    page.get_by_role("tab", name="Evaluate").click()
    page.click("#evaluate-run")
    table = page.locator("#evaluate-table")
    page.wait_for_function("() => (document.querySelector('#evaluate-legend')?.innerText || '').includes('Reference:')",
                           timeout=900_000)  # fp32 reference and nf4 on a shared 2-core CPU
    text = table.inner_text()
    for variant in ("transformers:fp32", "llamacpp:Q8_0", "llamacpp:Q4_K_M", "llamacpp:Q2_K", "transformers:nf4"):
        assert variant in text
    for column in ("KLD mean", "PPL", "top-1 agree %", "memory MiB", "decode tok/s"):
        assert column in text
    page.locator("#evaluate-plot img, #evaluate-plot canvas, #evaluate-plot svg").first.wait_for()
    page.screenshot(path=str(shots / "evaluate.png"), full_page=True)
