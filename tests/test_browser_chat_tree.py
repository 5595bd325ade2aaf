"""The conversation tree and replies that survive a reload, in a real headless Chromium against the
embedded model, clicked by what a person reads: an edited first question makes a branch, and the
original branch comes back with its later turns intact (and survives a reload); a reload mid-reply
shows the reply go on and finish; a reply stopped after a reload is kept as stopped."""

from __future__ import annotations

import time

import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings
from tests.test_browser import page, pytestmark  # noqa: F401 (fixtures and the Chromium skip)
from tests.test_browser_chat import finished_turns, send, set_number, user_texts

SPEC = ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=1)


@pytest.fixture(scope="module")
def server(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        srv.manager.load(SPEC)
        yield srv


@pytest.fixture(scope="module")
def app_url(server):  # the `page` fixture opens this
    return server.url


def wait_ready(page) -> None:
    page.wait_for_selector("#message textarea")
    page.wait_for_selector("#model-badge :text('Serving')")


def reply_texts(page) -> list[str]:
    """Each reply's own text (not thinking or stats)."""
    return page.evaluate("""() => [...document.querySelectorAll('#chatbot .bot .message')]
        .filter(m => !m.classList.contains('thought')).map(m => m.innerText.trim())""")


def arrows_of(page, question: str):
    """The "◀ n/m ▶" under the question that reads ``question``."""
    return page.locator("#chatbot .message-row", has_text=question).locator(".branch-arrows")


def test_editing_the_first_question_keeps_the_original_branch_with_its_later_turns(page, shots):
    set_number(page, "Temperature (0 = greedy)", 0)
    set_number(page, "Max new tokens", 8)
    for q in ("Name a colour.", "Name an animal.", "Name a city."):
        send(page, q)
    assert user_texts(page) == ["Name a colour.", "Name an animal.", "Name a city."]
    page.locator("#chatbot .bubble-wrap").evaluate("w => { w.scrollTop = 0; }")
    page.click("#message textarea")
    page.keyboard.press("Control+Enter")  # Regenerate: a second version of the last reply
    page.locator("#chatbot .message-row").last.locator(".branch-arrows").get_by_text("2/2").wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#chat-stats').innerText.includes('prompt +')")
    # the view went to the end: the new reply and the version bar are on screen
    page.wait_for_function("() => { const w = document.querySelector('#chatbot .bubble-wrap');"
                           " return w.scrollTop + w.clientHeight >= w.scrollHeight - 8; }", timeout=10_000)
    assert page.locator("#versions").is_visible() and page.locator("#versions").evaluate(
        "e => e.getBoundingClientRect().bottom <= window.innerHeight")
    original = reply_texts(page)
    assert len(original) == 3
    page.locator("#chatbot").get_by_text("Name a colour.", exact=True).hover()
    page.get_by_role("button", name="Edit").first.click()
    editor = page.locator("#chatbot textarea")
    height = editor.evaluate("e => e.getBoundingClientRect().height")
    assert height > 120, f"the inline editor is cramped ({height:.0f} px high)"
    editor.fill("Name a fruit.")
    page.screenshot(path=str(shots / "chat-edit.png"))
    page.get_by_role("button", name="Submit").first.click()
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 1", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Stats:')", timeout=120_000)
    assert user_texts(page) == ["Name a fruit."]
    bar = arrows_of(page, "Name a fruit.")
    bar.get_by_text("2/2").wait_for()
    page.get_by_role("button", name="Previous version").first.click()
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 3")
    assert user_texts(page) == ["Name a colour.", "Name an animal.", "Name a city."]
    assert reply_texts(page) == original  # the later turns, as they were
    arrows_of(page, "Name a colour.").get_by_text("1/2").wait_for()
    page.evaluate("() => document.querySelectorAll('#chatbot .bubble-wrap').forEach(w => { w.scrollTop = 0; })")
    time.sleep(0.3)
    page.screenshot(path=str(shots / "chat-branches.png"))
    # the arrows stay when another message is clicked, and the branches survive a reload
    page.locator("#chatbot").get_by_text("Name a city.", exact=True).click()
    arrows_of(page, "Name a colour.").get_by_text("1/2").wait_for()
    time.sleep(1.0)  # the save reaches localStorage
    page.reload()
    wait_ready(page)
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 3")
    page.get_by_role("button", name="Next version").first.click()
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 1")
    assert user_texts(page) == ["Name a fruit."]


def wait_streaming(page, question: str, more_than: int = 10) -> None:
    page.wait_for_function("""([q, n]) => { const t = document.querySelector('#chatbot').innerText;
        const rest = t.slice(t.lastIndexOf(q) + q.length);
        return t.includes(q) && rest.replace('Loading content', '').trim().length > n && !rest.includes('Stats:'); }""",
                           arg=[question, more_than], timeout=120_000)


def test_a_reload_mid_reply_shows_the_reply_going_on_and_finishing(page):
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 0")
    set_number(page, "Max new tokens", 200)
    question = "Count from 1 to 200, separated by commas."
    page.fill("#message textarea", question)
    page.keyboard.press("Enter")
    wait_streaming(page, question)
    page.reload()
    wait_ready(page)
    page.wait_for_function("(q) => document.querySelector('#chatbot').innerText.includes(q)", arg=question)
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Stats:')", timeout=180_000)
    assert user_texts(page) == [question]
    (reply,) = reply_texts(page)
    assert len(reply) > 40 and "stopped" not in page.locator("#chatbot").inner_text()
    assert "prompt +" in page.locator("#chat-stats").inner_text()


def test_stop_after_a_reload_keeps_the_reply_as_stopped(page):
    # a fresh chat and room for a long reply: it must still be streaming after the reload (the count
    # after an earlier turn can end early)
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 0")
    set_number(page, "Max new tokens", 1000)
    question = "Count from 1 to 300, separated by commas."
    page.fill("#message textarea", question)
    page.keyboard.press("Enter")
    wait_streaming(page, question)
    page.reload()
    wait_ready(page)
    wait_streaming(page, question, more_than=30)  # still streaming after the reload
    page.keyboard.press("Escape")
    page.wait_for_selector("#chatbot .bot-row :text('Stats: stopped')", timeout=30_000)
    kept = reply_texts(page)[-1]
    time.sleep(1.0)
    page.reload()
    wait_ready(page)
    page.wait_for_selector("#chatbot .bot-row :text('Stats: stopped')", timeout=30_000)
    assert reply_texts(page)[-1] == kept and finished_turns(page) == 1
    set_number(page, "Max new tokens", 8)
