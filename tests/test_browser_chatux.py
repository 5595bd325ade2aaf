"""What a newcomer tripped on, driven in a real headless Chromium by the visible labels: deleting a
chat asks first ("Keep it" keeps it), a new chat starts from the default system prompt (the old chat
keeps its own), and the Notebook's presets, live token count and counts after Stop (the pattern of
tests/test_browser.py). Screenshots: delete_confirm.png, new_chat.png, notebook_stopped.png in
$QUANTLAB_SCREENSHOTS (docs/ when refreshing them) or a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_browser import ARGS, CHROMIUM, REQUIRED

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not REQUIRED and not Path(CHROMIUM).exists(),
    reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")]



@pytest.fixture(scope="module")
def srv(live_app):
    return live_app  # the suite's shared app (embedded model, llama.cpp); a fresh browser has no chats


@pytest.fixture(scope="module")
def page(srv):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.set_default_timeout(90_000)
        pg.goto(srv.url, wait_until="load")
        pg.wait_for_selector("#model-badge :text('Serving')")  # the page's load events have run
        yield pg
        browser.close()


def past_chats(page) -> list[str]:
    """The past chats' titles, in name order (a switch re-saves a chat, which can reorder the list and
    touch its time)."""
    return sorted(t.split(" · ")[0] for t in page.locator("#chat-list label").all_inner_texts())


def set_number(page, label: str, value: str) -> None:
    """Type ``value`` into the shown slider labelled ``label`` (its number box)."""
    box = page.locator(f"input[aria-label='number input for {label}']:visible")
    box.fill(value)
    box.press("Enter")


def test_a_new_chat_starts_from_the_default_system_prompt(page, shots):
    from playwright.sync_api import expect

    system = page.get_by_label("System prompt")
    system.fill("You are a pirate. Answer in one word.")
    system.blur()
    set_number(page, "Max new tokens", "6")
    page.get_by_placeholder("Type a message and press Enter").fill("Say hello.")
    page.get_by_placeholder("Type a message and press Enter").press("Enter")
    page.wait_for_selector("#chat-stats :text('tok/s')")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 1")
    page.get_by_role("button", name="New chat").click()
    expect(system).to_have_value("")  # not the last chat's system prompt
    page.screenshot(path=str(shots / "new_chat.png"))
    page.wait_for_timeout(1500)  # the new chat's save reaches localStorage
    page.reload()
    page.wait_for_selector("#model-badge :text('Serving')")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 2")
    expect(page.get_by_label("System prompt")).to_have_value("")  # a reload shows the new chat as it was
    # the pirate chat keeps its own
    page.locator("#chat-list").get_by_text(re.compile(r"^Say hello\.")).click()
    expect(system).to_have_value("You are a pirate. Answer in one word.")


def test_deleting_a_chat_asks_first(page, shots):
    before = past_chats(page)
    assert before, "the previous test leaves a saved chat"
    assert page.get_by_role("button", name="Delete chat").is_visible()
    assert page.get_by_role("button", name="Delete preset").is_visible()  # the two deletes say what they delete
    page.get_by_role("button", name="Delete chat").click()
    page.get_by_text(re.compile(r"^Delete the chat “.*”\? This cannot be undone\.$")).wait_for()
    page.screenshot(path=str(shots / "delete_confirm.png"))
    assert past_chats(page) == before, "one click on Delete chat must not delete anything"
    page.get_by_role("button", name="Keep it").click()
    page.get_by_text(re.compile(r"^Delete the chat “.*”\? This cannot be undone\.$")).wait_for(state="hidden")
    assert past_chats(page) == before
    page.get_by_role("button", name="Delete chat").click()
    page.get_by_role("button", name="Yes, delete this chat").click()
    page.wait_for_function(f"() => document.querySelectorAll('#chat-list label').length === {len(before) - 1}")


def test_notebook_presets_live_token_count_and_counts_after_stop(page, srv, shots):
    page.get_by_role("tab", name="Notebook").click()
    page.locator("input[aria-label='Sampler preset']").click()
    page.get_by_role("option", name="LLaMA-Precise", exact=True).click()
    page.wait_for_function("() => document.querySelector(\"#notebook-temperature input[type=number]\").value === '0.7'")
    # every sampler llama.cpp has (DRY's settings included), not the transformers-only one
    advanced = page.locator("#notebook-advanced")
    advanced.get_by_text("Advanced samplers").click()
    for label in ("Min p (0 = off)", "DRY multiplier (0 = off)", "DRY base", "DRY sequence breakers", "Mirostat tau"):
        advanced.get_by_text(label, exact=True).wait_for()
    assert advanced.get_by_text("No-repeat n-gram size (0 = off)").count() == 0
    text = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    box = page.locator("#notebook-text textarea")
    box.fill(text[:-4])
    box.press_sequentially(text[-4:])  # typed: the count follows the typing
    n = len(srv.manager.tokenize(text))  # the model's own count of the whole text, as typed
    page.locator("#notebook-tokens").get_by_text(f"{n} tokens in the text", exact=True).wait_for()
    set_number(page, "Max new tokens", "1500")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(f"() => document.querySelector('#notebook-text textarea').value.length > {len(text) + 40}")
    page.locator("#notebook-stop").click()  # the Notebook's Stop (the chat's is on the hidden tab)
    counts = page.locator("#notebook-counts").get_by_text("stopped")
    counts.wait_for()
    page.screenshot(path=str(shots / "notebook_stopped.png"))
    line = counts.inner_text()
    prompt, generated = (int(n) for n in re.findall(r"(\d+)\s+(?:prompt|generated)", line))
    record = srv.manager.metrics.recent(1)[0]
    assert record.endpoint == "ui" and record.outcome == "cancelled"
    assert (prompt, generated) == (record.prompt_tokens, record.completion_tokens)
    assert 0 < generated < 1500 and "tok/s" in line
    assert record.sampling["top_p"] == 0.1 and record.sampling["repetition_penalty"] == 1.18  # the preset's
