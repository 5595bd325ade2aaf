"""Pictures in the conversation on the llama.cpp backend: a tiny SmolVLM-architecture checkpoint
(``tests/vision_model.py``: random weights, made here) converted with the app's own converter into a
GGUF and its mmproj, loaded by auto-detection of the projector, and asked about pictures through the
real openai client. The same picture gives the same greedy reply, a different one another reply; the
picture's tokens are in usage; bad pictures are refused with a 400 and the server goes on."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import openai
import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from serving.images import decode_image
from tests.live_server import make_settings
from tests.vision_model import IMAGE_TOKENS, bomb_png, data_url, png, vision_gguf

pytestmark = pytest.mark.slow

RED, BLUE = png((255, 0, 0)), png((0, 0, 255))
NOISE = png(seed=1)


@pytest.fixture(scope="module")
def vlm_gguf(cache_dir):
    return vision_gguf(cache_dir)


@pytest.fixture(scope="module")
def vlm_app(vlm_gguf, cache_dir):
    from app import LiveServer

    settings = make_settings(cache_dir=cache_dir, max_image_bytes=20_000, max_image_pixels=512 * 512, max_images=3)
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source=str(vlm_gguf), backend="llamacpp", n_ctx=512, parallel=2))
        yield srv


@pytest.fixture(scope="module")
def vlm_oai(vlm_app):
    c = openai.OpenAI(base_url=vlm_app.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    yield c
    c.close()


def ask(client, *images: bytes, text: str = "What is in the picture?", max_tokens: int = 8):
    parts = [{"type": "image_url", "image_url": {"url": data_url(img)}} for img in images]
    return client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
        max_tokens=max_tokens, temperature=0, seed=0)


def test_the_converter_makes_the_projector_beside_the_gguf(vlm_gguf):
    projectors = sorted(p.name for p in vlm_gguf.parent.glob("mmproj*.gguf"))
    assert projectors == ["mmproj-" + vlm_gguf.name]


def test_same_picture_same_reply_other_picture_other_reply(vlm_oai):
    red1, red2, blue, noise = (ask(vlm_oai, img).choices[0].message.content for img in (RED, RED, BLUE, NOISE))
    assert red1 and red1 == red2
    assert len({red1, blue, noise}) == 3, (red1, blue, noise)


def test_the_pictures_tokens_are_counted_in_usage(vlm_oai):
    text_only = vlm_oai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is in the picture?"}], max_tokens=2,
        temperature=0).usage.prompt_tokens
    with_image = ask(vlm_oai, RED, max_tokens=2).usage.prompt_tokens
    assert with_image - text_only >= IMAGE_TOKENS


def test_models_say_the_model_sees(vlm_oai):
    assert "vision" in vlm_oai.models.list().data[0].model_extra["capabilities"]


@pytest.mark.parametrize("bad, words", [
    (b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8, "image"),
    (RED[: len(RED) // 2], "image"),
    (bomb_png(), "pixels"),
    (png(seed=2, size=128), "bytes"),
], ids=["malformed", "truncated", "bomb", "oversized"])
def test_bad_pictures_are_refused_and_the_server_goes_on(vlm_oai, bad, words):
    with pytest.raises(openai.BadRequestError) as err:
        ask(vlm_oai, bad)
    assert words in str(err.value).lower()
    assert ask(vlm_oai, RED).choices[0].message.content  # still serving


def test_too_many_pictures_and_remote_urls_are_refused(vlm_oai):
    with pytest.raises(openai.BadRequestError, match="at most 3"):
        ask(vlm_oai, RED, RED, RED, RED)
    with pytest.raises(openai.BadRequestError, match="data URL"):
        vlm_oai.chat.completions.create(model="default", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}, {"type": "text", "text": "hi"}]}])


def test_a_text_only_model_refuses_a_picture_naming_the_capability(live_oai):
    with pytest.raises(openai.BadRequestError) as err:
        ask(live_oai, RED)
    assert "vision" in str(err.value) and "text-only" in str(err.value)
    assert "vision" not in live_oai.models.list().data[0].model_extra["capabilities"]


@pytest.mark.parametrize("parallel", [1, 2])
def test_both_llamacpp_paths_see_the_picture(vlm_gguf, cache_dir, parallel):
    """One slot (the model's own context) and the batch engine (a slot of its shared context) give
    the picture's reply; a picture-less turn after it is not confused by the picture's KV cells."""
    from backends.llamacpp.backend import LlamaCppBackend

    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source=str(vlm_gguf), backend="llamacpp", n_ctx=512, parallel=parallel))
    try:
        def reply(*images: bytes) -> str:
            msg = Message("user", "What is in the picture?", images=tuple(decode_image(i, "image") for i in images))
            req = ChatRequest((msg,), SamplingParams(max_new_tokens=6, temperature=0.0, seed=0))
            return "".join(d.text for d in b.stream(req, threading.Event()))

        text = reply()
        red = reply(RED)
        assert red == reply(RED) and red != reply(BLUE) and red != text
        assert reply() == text
    finally:
        b.unload()


@pytest.fixture(scope="module")
def vlm_client(vlm_app):
    from gradio_client import Client

    c = Client(vlm_app.url, verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def picture_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    for name, data in (("red.png", RED), ("blue.png", BLUE), ("bad.png", b"\x89PNG\r\n\x1a\nnot a picture")):
        (d / name).write_bytes(data)
    (d / "notes.md").write_text("# Notes\nThe secret word is heliotrope.\n")
    return d


def gradio_reply(client, files, message="What is in the picture?", history=()):
    from gradio_client import handle_file

    return client.predict(message, list(history), "", 8, 0.0, 1.0, 0, 1.0, 0,
                          files=[handle_file(str(f)) for f in files], api_name="/chat")


def test_gradio_chat_takes_pictures_as_files(vlm_client, vlm_oai, picture_files):
    """/chat's trailing ``files`` (gradio_client's handle_file) gives the same reply as the openai client
    with the same picture as a data URL, and another reply for another picture."""
    red, stats = gradio_reply(vlm_client, [picture_files / "red.png"])
    assert red == ask(vlm_oai, RED).choices[0].message.content
    assert stats["prompt_tokens"] > 10
    assert gradio_reply(vlm_client, [picture_files / "blue.png"])[0] != red
    assert gradio_reply(vlm_client, [])[0] != red  # the older positional call, no files, still works


def test_gradio_chat_refuses_a_bad_picture_and_a_server_path(vlm_client, picture_files):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="damaged|not an image"):
        gradio_reply(vlm_client, [picture_files / "bad.png"])
    # a caller naming a file of the server itself (plain REST: gradio_client would upload its own copy)
    import httpx

    import uuid

    outside = picture_files / f"green-{uuid.uuid4().hex}.png"  # a real picture of the server's, never uploaded
    outside.write_bytes(png((0, 255, 0)))
    base = vlm_client.src.rstrip("/")
    params = httpx.get(base + "/gradio_api/info").json()["named_endpoints"]["/chat"]["parameters"]
    given = {"message": "hi", "history": [], "max_new_tokens": 4,
             "files": [{"path": str(outside), "meta": {"_type": "gradio.FileData"}}]}
    data = [given.get(p["parameter_name"], p.get("parameter_default")) for p in params]
    event = httpx.post(base + "/gradio_api/call/chat", json={"data": data}).json()["event_id"]
    answer = httpx.get(base + f"/gradio_api/call/chat/{event}", timeout=120).text
    assert "event: error" in answer, answer[-500:]
    uploads = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    copied = list(uploads.rglob(outside.name)) if uploads.is_dir() else []
    assert not copied, f"the server's file was copied into the upload folder: {copied}"
    assert gradio_reply(vlm_client, [picture_files / "red.png"])[0]  # still serving


def test_every_dialect_shows_the_model_the_picture(vlm_app, vlm_oai):
    """Responses' input_image, Anthropic's image block and Ollama's images give the reply /v1/chat gives
    for the same picture and text, and another reply for another picture."""
    import base64

    import httpx

    def dialects(img: bytes) -> list[str]:
        b64 = base64.b64encode(img).decode()
        q = "What is in the picture?"
        with httpx.Client(base_url=vlm_app.url, timeout=600) as h:
            responses = h.post("/v1/responses", json={"model": "default", "max_output_tokens": 8, "temperature": 0,
                                                      "input": [{"role": "user", "content": [
                                                          {"type": "input_image", "image_url": data_url(img)},
                                                          {"type": "input_text", "text": q}]}]}).json()
            anthropic = h.post("/v1/messages", json={"model": "default", "max_tokens": 8, "temperature": 0, "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                          "data": b64}}, {"type": "text", "text": q}]}]}).json()
            ollama = h.post("/api/chat", json={"model": "default", "stream": False, "options": {
                "num_predict": 8, "temperature": 0, "repeat_penalty": 1.0}, "messages": [{"role": "user", "content": q, "images": [b64]}]}).json()
        return [responses["output"][-1]["content"][0]["text"], anthropic["content"][0]["text"],
                ollama["message"]["content"]]

    red = ask(vlm_oai, RED).choices[0].message.content
    assert dialects(RED) == [red] * 3
    assert red not in dialects(BLUE)


def test_compare_shows_every_variant_the_picture(vlm_client, vlm_gguf, picture_files):
    """/compare's trailing ``image``: the quant variants of a vision model answer about the same picture;
    another picture changes the answer."""
    from gradio_client import handle_file

    def texts(picture) -> list[str]:
        final = vlm_client.predict("What is in the picture?", ["llamacpp:F16", "llamacpp:Q8_0"], str(vlm_gguf), 6, 0.0,
                                   0, image=handle_file(str(picture)), api_name="/compare")
        assert all(s["done"] for s in final)
        # the quantized variant keeps the projector at its own type, and says so
        assert all("vision projector mmproj-" in s["provenance"]["note"] and "(F16)" in s["provenance"]["note"]
                   for s in final)
        return [s["text"] for s in final]

    red = texts(picture_files / "red.png")
    assert all(red) and red == texts(picture_files / "red.png")
    assert texts(picture_files / "blue.png") != red
