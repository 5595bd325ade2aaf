"""Attaching a picture and a text file in the chat, in a real headless Chromium, with the tiny vision
model (``tests/vision_model.py``) on llama.cpp: the question shows the picture as a thumbnail and the
file by name, and the reply is the one the openai client gets for the same picture (data URL) and
the same file context: the model saw both. Screenshot: vision-chat.png."""

from __future__ import annotations

import openai
import pytest

from backends.base import ModelSpec
from serving.attachments import context_block, with_context
from tests.conftest import LiveServer, make_settings
from tests.test_browser import page, pytestmark  # noqa: F401 (fixtures and the Chromium skip)
from tests.test_browser_chat import finished_turns, last_reply, set_number, wait_turn
from tests.vision_model import data_url, png, vision_gguf

NOTES = "The secret word is heliotrope.\n"
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def server(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        srv.manager.load(ModelSpec(source=str(vision_gguf(cache_dir)), backend="llamacpp", n_ctx=512, parallel=1))
        yield srv


@pytest.fixture(scope="module")
def app_url(server):  # the `page` fixture opens this
    return server.url


def test_attach_a_picture_and_a_file_in_the_chat(page, server, tmp_path, shots):
    picture, notes = tmp_path / "red.png", tmp_path / "notes.md"
    picture.write_bytes(png((255, 0, 0), size=64))
    notes.write_text(NOTES)
    set_number(page, "Temperature (0 = greedy)", 0)
    set_number(page, "Max new tokens", 8)
    page.locator("#attachments input[type=file]").set_input_files([str(picture), str(notes)])
    page.wait_for_function("() => document.querySelector('#attachments').innerText.includes('notes')")
    before = finished_turns(page)
    page.fill("#message textarea", QUESTION)
    page.keyboard.press("Enter")
    wait_turn(page, before)
    user = page.locator("#chatbot .user").first
    assert user.locator("img").count() == 1  # the thumbnail
    assert "notes.md" in page.locator("#chatbot").inner_text()
    page.wait_for_function("() => !document.querySelector('#attachments').innerText.includes('notes')")  # emptied
    page.screenshot(path=str(shots / "vision-chat.png"))

    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    expected = c.chat.completions.create(model="default", max_tokens=8, temperature=0, messages=[{
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(picture.read_bytes())}},
                                    {"type": "text", "text": with_context(QUESTION, context_block("notes.md", NOTES))}]}])
    c.close()
    assert last_reply(page) == expected.choices[0].message.content.strip()
