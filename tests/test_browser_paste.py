"""Pictures pasted into the message box and files dropped onto it, in a real headless Chromium, with
the tiny vision model (``tests/vision_model.py``) on llama.cpp: a real ``paste`` event whose clipboard
holds a PNG made in the page, and a real ``drop`` of a text file, land in the attach box as if chosen
there (a text paste stays a text paste); the reply is the one the openai client gets for the same
picture and file: the model saw both. Editing that question keeps its picture and file, and the
regenerated reply sees them. Screenshots: vision-paste.png, vision-edit.png."""

from __future__ import annotations

import base64

import openai

from serving.attachments import context_block, with_context
from tests.test_browser import page, pytestmark  # noqa: F401 (fixtures and the Chromium skip)
from tests.test_browser_chat import finished_turns, last_reply, set_number, wait_turn
from tests.test_browser_vision import NOTES, QUESTION, app_url, server  # noqa: F401 (the vision model's app)
from tests.vision_model import data_url, png

EDITED = "Describe the picture."
RED = png((255, 0, 0), size=64)

PASTE = """([b64, text]) => {
  const box = document.querySelector('#message textarea');
  const dt = new DataTransfer();
  if (b64) {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    dt.items.add(new File([bytes], 'image.png', {type: 'image/png'}));  // what a pasted screenshot is
  }
  if (text) dt.setData('text/plain', text);
  box.focus();
  const paste = new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true});
  return box.dispatchEvent(paste) ? 'not handled' : 'handled';
}"""

DROP = """([name, text]) => {
  const box = document.querySelector('#message textarea');
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, {type: 'text/markdown'}));
  for (const type of ['dragenter', 'dragover']) box.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
  return box.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})) ? 'not handled' : 'handled';
}"""


def expected_reply(server, question: str, picture: bool = True) -> str:
    """The reply the openai client gets for the picture (data URL) and the file's context block."""
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    image = [{"type": "image_url", "image_url": {"url": data_url(RED)}}] if picture else []
    try:
        out = c.chat.completions.create(model="default", max_tokens=8, temperature=0, messages=[{
            "role": "user", "content": [*image, {"type": "text", "text": with_context(question, context_block("notes.md", NOTES))}]}])
    finally:
        c.close()
    return out.choices[0].message.content.strip()


def attached(page) -> str:
    """The attach box's text, without the line breaks it puts inside a file's name."""
    return "".join(page.locator("#attachments").inner_text().split())


def wait_attached(page, name: str) -> None:
    page.wait_for_function("n => document.querySelector('#attachments').innerText.replace(/\\s/g, '').includes(n)", arg=name)


def test_a_pasted_picture_and_a_dropped_file_are_attached_and_seen(page, server, shots):
    set_number(page, "Temperature (0 = greedy)", 0)
    set_number(page, "Max new tokens", 8)
    # a text paste is left to the browser: nothing attached
    assert page.evaluate(PASTE, [None, "plain words"]) == "not handled"
    assert page.evaluate(PASTE, [base64.b64encode(RED).decode(), "cells"]) == "not handled"  # text wins
    page.wait_for_timeout(500)
    assert "image.png" not in attached(page)
    assert page.evaluate(PASTE, [base64.b64encode(RED).decode(), None]) == "handled"
    wait_attached(page, "image.png")
    assert page.evaluate(DROP, ["notes.md", NOTES]) == "handled"
    wait_attached(page, "notes.md")
    assert "image.png" in attached(page)  # the drop added to the pasted picture
    page.screenshot(path=str(shots / "vision-paste-attached.png"))
    before = finished_turns(page)
    page.fill("#message textarea", QUESTION)
    page.keyboard.press("Enter")
    wait_turn(page, before)
    user = page.locator("#chatbot .user").first
    assert user.locator("img").count() == 1  # the pasted picture's thumbnail
    assert "notes.md" in page.locator("#chatbot").inner_text()
    page.screenshot(path=str(shots / "vision-paste.png"))
    assert last_reply(page) == expected_reply(server, QUESTION)


def test_editing_the_question_keeps_its_picture_and_file(page, server, shots):
    page.locator("#chatbot").get_by_text(QUESTION, exact=True).hover()
    page.get_by_role("button", name="Edit").first.click()
    page.locator("#chatbot textarea").fill(EDITED)
    page.get_by_role("button", name="Submit").first.click()
    # the edit made a second version of the question (its arrows), and its reply came
    page.locator("#chatbot .message-row", has_text=EDITED).locator(".branch-arrows").get_by_text("2/2").wait_for()
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Stats:')", timeout=120_000)
    user = page.locator("#chatbot .user").first
    assert user.locator("img").count() == 1 and "notes.md" in page.locator("#chatbot").inner_text()
    page.screenshot(path=str(shots / "vision-edit.png"))
    assert last_reply(page) == expected_reply(server, EDITED) != expected_reply(server, EDITED, picture=False)
