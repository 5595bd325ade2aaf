"""The Notebook, the sampler presets and the Model tab's loader form in a real headless Chromium
(the pattern of tests/test_browser.py). Screenshots: docs/notebook.png, docs/samplers.png when
$QUANTLAB_SCREENSHOTS=docs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings
from tests.test_browser import ARGS, CHROMIUM, REQUIRED

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not REQUIRED and not Path(CHROMIUM).exists(),
    reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")]

STORED = "(() => localStorage.getItem('quantlab-presets'))"
NGRAM = "input[aria-label='number input for No-repeat n-gram size (0 = off)']"
TEMPERATURE = "input[aria-label='number input for Temperature (0 = greedy)']"  # the chat's (first; the Notebook has its own)


@pytest.fixture(scope="module")
def app_url(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1536, parallel=2))
        yield srv.url


@pytest.fixture(scope="module")
def page(app_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.goto(app_url)
        pg.wait_for_selector("#model-badge :text('Serving')")  # the page's load events have run
        yield pg
        browser.close()


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the dropdown labelled ``label``, as a person does (open it, click the entry)."""
    page.locator(f"input[aria-label='{label}']").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_notebook_continues_the_text_in_place(page, shots):
    page.get_by_role("tab", name="Notebook").click()
    box = page.locator("#notebook-text textarea")
    box.fill("The three primary colours are red,")
    for box_id, value in (("#notebook-temperature", "0"), ("#notebook-max-new", "24")):
        number = page.locator(f"{box_id} input[type='number']")
        number.fill(value)
        number.press("Enter")
    page.click("#notebook-generate")
    page.wait_for_selector("#notebook-counts :text('generated')", timeout=120_000)
    text = box.input_value()
    assert text.startswith("The three primary colours are red,")
    assert len(text) > len("The three primary colours are red,") + 3, text
    counts = page.locator("#notebook-counts").inner_text()
    generated = re.search(r"\+ (\d+) generated", counts)
    assert "prompt tokens" in counts and "tok/s" in counts and generated, counts
    assert 1 <= int(generated.group(1)) <= 24, "Max new tokens was not honoured"
    page.screenshot(path=str(shots / "notebook.png"))
    # Undo brings back the text as it was before Generate
    page.click("#notebook-undo")
    page.wait_for_function("() => document.querySelector('#notebook-text textarea').value"
                           " === 'The three primary colours are red,'")


def test_presets_set_the_samplers_and_saved_ones_survive_a_reload(page, shots):
    page.get_by_role("tab", name="Chat").click()
    choose(page, "Preset", "Deterministic")
    page.wait_for_function(f"() => document.querySelector(\"{TEMPERATURE}\").value === '0'")
    choose(page, "Preset", "Creative")
    page.wait_for_function(f"() => document.querySelector(\"{TEMPERATURE}\").value === '1.1'")
    # a preset of one's own, kept in this browser
    temperature = page.locator(TEMPERATURE).first
    temperature.fill("1.3")
    temperature.press("Enter")
    preset = page.locator("input[aria-label='Preset']")
    preset.fill("My sampler")
    preset.press("Enter")
    stored = page.evaluate(STORED)
    page.click("#preset-save")
    page.wait_for_function(f"(before) => {STORED}() !== before", arg=stored)  # Gradio encrypts the value
    page.locator("#advanced-samplers").get_by_text("Advanced samplers").click()
    page.locator(NGRAM).first.wait_for()
    page.wait_for_timeout(600)  # the accordion's opening animation
    page.screenshot(path=str(shots / "samplers.png"), full_page=True)
    page.reload()
    page.wait_for_selector("#model-badge :text('Serving')")
    choose(page, "Preset", "My sampler")
    page.wait_for_function(f"() => document.querySelector(\"{TEMPERATURE}\").value === '1.3'")
    stored = page.evaluate(STORED)
    page.click("#preset-delete")
    page.wait_for_function(f"(before) => {STORED}() !== before", arg=stored)
    page.wait_for_function("() => document.querySelector(\"input[aria-label='Preset']\").value === 'Balanced'")
    page.reload()
    page.wait_for_selector("#model-badge :text('Serving')")
    page.locator("input[aria-label='Preset']").click()
    assert page.get_by_role("option", name="My sampler").count() == 0, "the deleted preset came back"
    page.keyboard.press("Escape")


def test_the_model_form_shows_what_is_loaded_and_keeps_a_failed_loads_reason(page):
    page.get_by_role("tab", name="Model").click()
    page.locator("#loader-options").get_by_text("Loader options").click()
    assert page.locator("#n-ctx input").input_value() == "1536"
    assert page.locator("#parallel input").input_value() == "2"
    model = page.locator("#model-source textarea, #model-source input").first
    model.fill("/no/such/model.gguf")
    page.click("#load")
    page.wait_for_function("() => document.querySelector('#load-status textarea').value.includes('Load failed')")
    status = page.locator("#load-status textarea").input_value()
    assert "/no/such/model.gguf" in status and status.count("%") <= 1
    page.wait_for_timeout(1500)  # the reason stays after the error (not only in a toast)
    assert "Load failed" in page.locator("#load-status textarea").input_value()


def test_a_sampler_the_backend_lacks_is_named_in_a_toast(page):
    page.get_by_role("tab", name="Chat").click()
    accordion = page.locator("#advanced-samplers")
    if not page.locator(NGRAM).first.is_visible():
        accordion.get_by_text("Advanced samplers").click()
    ngram = page.locator(NGRAM).first
    for _ in range(5):  # the Chat tab just opened may still be rendering its controls and reset a value typed at once
        ngram.fill("3")
        ngram.press("Enter")
        page.wait_for_timeout(400)
        if ngram.input_value() == "3":
            break
    assert ngram.input_value() == "3"
    page.fill("#message textarea", "Hello there.")
    page.keyboard.press("Enter")
    toast = page.locator(".toast-body", has_text="no_repeat_ngram_size")
    try:
        toast.wait_for(timeout=60_000)
    except Exception:  # say what the page showed instead (a reply would mean the sampler went unchecked)
        state = page.evaluate("""() => ({toasts: [...document.querySelectorAll('.toast-body')].map(t => t.innerText),
            chat: document.querySelector('#chatbot').innerText.slice(-400), stats: document.querySelector('#chat-stats')?.innerText})""")
        raise AssertionError(f"no toast naming the sampler; ngram box {ngram.input_value()!r}; page: {state}") from None
    assert "llamacpp" in toast.inner_text()
    ngram.fill("0")
    ngram.press("Enter")
