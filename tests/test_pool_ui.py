"""Choosing the model per request in the Gradio API and the UI, with a model pool: Gradio /chat's
trailing ``model`` parameter (through the real gradio_client), the chat's model picker (per
conversation: a past chat reopens with its model) and the Model tab's pool table (load, unload),
driven in real Chromium."""

from __future__ import annotations

import shutil

import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings
from tests.test_browser import page, pytestmark  # noqa: F401 (fixtures and the Chromium skip)
from tests.test_browser_chat import finished_turns, send, set_number


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedded_gguf, cache_dir):
    d = tmp_path_factory.mktemp("pool-ui")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=d, request_log="")) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))
        yield srv


@pytest.fixture(scope="module")
def app_url(server):  # the `page` fixture opens this
    return server.url


def last_model(server, endpoint: str) -> str:
    return [r for r in server.app.state.services.stats(20)["recent"] if r["endpoint"] == endpoint][-1]["model"]


def test_gradio_chat_takes_the_model_as_its_last_parameter(server):
    from gradio_client import Client

    c = Client(server.url, verbose=False)
    try:
        reply, stats = c.predict("Say hello.", [], "", api_name="/chat", max_new_tokens=4, model="alpha")
        assert stats["completion_tokens"] > 0 and last_model(server, "chat") == "alpha"
        c.predict("Say hello.", [], "", api_name="/chat", max_new_tokens=4)  # default "": the chat's model
        assert last_model(server, "chat") == server.manager.current.name
        with pytest.raises(Exception, match="does not exist"):
            c.predict("Say hello.", [], "", api_name="/chat", max_new_tokens=4, model="../alpha")
        assert c.predict("Say hello.", [], "", api_name="/chat", max_new_tokens=4, model="alpha")[1]["completion_tokens"]
    finally:
        c.close()


def pick_model(page, label: str) -> None:
    page.click("#chat-model input")
    page.get_by_role("option", name=label, exact=True).click()


def test_the_chat_picks_its_model_per_conversation(page, server, shots):
    page.get_by_role("tab", name="Chat").click()
    # before it is opened, the picker names the model served now (the page was built before it loaded)
    page.wait_for_function("(n) => document.querySelector('#chat-model input').value === `Chat model (${n})`",
                           arg=server.manager.current.name, timeout=30_000)
    set_number(page, "Max new tokens", 8)
    pick_model(page, "alpha")
    send(page, "Say hello.")
    assert last_model(server, "ui") == "alpha"
    page.screenshot(path=str(shots / "chat-model-picker.png"))
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 0")
    pick_model(page, f"Chat model ({server.manager.current.name})")
    before = finished_turns(page)
    send(page, "Say hi.")
    assert finished_turns(page) > before and last_model(server, "ui") == server.manager.current.name
    # back to the first chat: it answers with alpha again
    page.locator("#chat-list label").last.click()
    page.wait_for_function("() => document.querySelector('#chat-model input').value === 'alpha'", timeout=30_000)


def status_is(page, text: str, timeout: float) -> None:
    page.wait_for_function("(t) => document.querySelector('#pool-status textarea').value.includes(t)", arg=text,
                           timeout=timeout)


def test_the_model_tab_lists_the_pool_and_loads_and_unloads(page, server, shots):
    page.get_by_role("tab", name="Model").click()
    table = page.locator("#pool-table")
    table.get_by_text("alpha", exact=True).first.wait_for()
    table.get_by_text("alpha", exact=True).first.click()
    page.wait_for_function("() => document.querySelector('#pool-pick input').value === 'alpha'")
    page.click("#pool-load")
    status_is(page, "Loaded alpha", 120_000)
    page.wait_for_function("() => /alpha\\s+loaded/.test(document.querySelector('#pool-table').innerText)", timeout=30_000)
    assert [r.pool_name for r in server.manager.pool.residents()] == ["alpha"]
    page.screenshot(path=str(shots / "model-pool.png"), full_page=True)
    page.click("#pool-unload")
    status_is(page, "Unloaded alpha", 60_000)
    page.wait_for_function("() => /alpha\\s+unloaded/.test(document.querySelector('#pool-table').innerText)", timeout=30_000)
    assert server.manager.pool.residents() == []

