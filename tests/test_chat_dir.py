"""Past chats with ``--chat-dir``, in real headless Chromium against the real app and model: each
logged-in user's chats are written to the server and come back after a reload (and in a browser whose
storage was wiped), no user sees another's, and anonymous visitors never share a file on the server.
Also: saving chats does not pile up files on the server's disk, with or without --chat-dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from backends.base import ModelSpec
from serving.chat_store import ChatStore
from tests.conftest import LiveServer, make_settings
from tests.test_browser import ARGS, CHROMIUM, REQUIRED, pytestmark  # noqa: F401 (the Chromium skip)

SPEC = ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1)
USERS = {"alice": "wonderland-7", "bob": "builder-9"}


@pytest.fixture(scope="module")
def browser():
    if REQUIRED:
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def logged_in_server(cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat-dir")
    users = folder / "users.txt"
    users.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    chats = folder / "chats"
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="", auth=str(users), chat_dir=chats)) as srv:
        srv.manager.load(SPEC)
        srv.chat_dir = chats
        yield srv


@pytest.fixture(scope="module")
def anonymous_server(cache_dir, tmp_path_factory):
    """With its own Gradio cache and temporary folder, so the files this server leaves are countable."""
    import tempfile

    base = tmp_path_factory.mktemp("anon-chat-dir")
    chats, gradio_tmp, tmp = base / "chats", base / "gradio", base / "tmp"
    tmp.mkdir()
    saved_env, saved_tmp = os.environ.get("GRADIO_TEMP_DIR"), tempfile.tempdir
    os.environ["GRADIO_TEMP_DIR"], tempfile.tempdir = str(gradio_tmp), str(tmp)
    try:
        with LiveServer(make_settings(cache_dir=cache_dir, request_log="", chat_dir=chats)) as srv:
            srv.manager.load(SPEC)
            srv.chat_dir, srv.gradio_tmp, srv.tmp = chats, gradio_tmp, tmp
            yield srv
    finally:
        tempfile.tempdir = saved_tmp
        if saved_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved_env


def open_page(browser, url: str, user: str | None = None):
    """A page in its own browser context (its own cookies and localStorage), logged in as ``user``."""
    context = browser.new_context(viewport={"width": 1280, "height": 960})
    if user:
        r = context.request.post(url + "/login", form={"username": user, "password": USERS[user]})
        assert r.ok, r.text()
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    ready(page)
    return page


def ready(page) -> None:
    page.wait_for_selector("#message textarea")
    page.wait_for_selector("#model-badge :text('Serving')")  # the page's load events (restore) have run
    time.sleep(1.0)  # the restore event's outputs are on screen


def send(page, text: str) -> None:
    box = page.locator("input[aria-label='number input for Max new tokens']")
    box.fill("4")
    box.press("Enter")
    before = page.locator("#chatbot .bot-row :text('Stats:')").count()
    page.fill("#message textarea", text)
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => [...document.querySelectorAll('#chatbot .bot-row')].map(r => r.innerText)"
                           f".join('\\n').split('Stats:').length - 1 > {before}", timeout=120_000)
    time.sleep(1.5)  # the turn's save step has run


def listed(page) -> str:
    return page.locator("#chat-list").inner_text()


def on_screen(page) -> str:
    return page.locator("#chatbot").inner_text() + "\n" + listed(page)


def user_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.exists() else []


def test_a_logged_in_users_chats_are_saved_on_the_server_and_come_back_after_a_reload(browser, logged_in_server):
    srv = logged_in_server
    alice = open_page(browser, srv.url, "alice")
    send(alice, "Alice plants tulips.")
    stored = ChatStore(srv.chat_dir).load("alice")
    assert stored and "Alice plants tulips." in json.dumps(stored), "the turn was not written to --chat-dir"
    alice.reload()
    ready(alice)
    alice.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Alice plants tulips.')")
    # a new chat, then a wiped browser: the server's copy is what comes back
    alice.click("#new-chat")
    alice.wait_for_function("() => document.querySelectorAll('#chatbot .user').length === 0")
    send(alice, "Alice counts clouds.")
    alice.evaluate("() => localStorage.clear()")
    alice.reload()
    ready(alice)
    alice.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Alice counts clouds.')")
    assert "Alice plants tulips." in listed(alice)
    alice.context.close()


def test_two_logged_in_users_never_see_each_others_chats(browser, logged_in_server):
    srv = logged_in_server
    alice = open_page(browser, srv.url, "alice")
    send(alice, "Alice hides a key under the mat.")
    bob = open_page(browser, srv.url, "bob")
    assert "Alice" not in on_screen(bob)
    send(bob, "Bob paints the fence.")
    bob.reload()
    ready(bob)
    bob.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Bob paints the fence.')")
    assert "Alice" not in on_screen(bob)
    alice.reload()
    ready(alice)
    assert "Bob paints" not in on_screen(alice) and "Alice hides a key" in on_screen(alice)
    # the same browser profile, bob logging in after alice: the server's copy for bob, not alice's store
    alice.context.request.post(srv.url + "/login", form={"username": "bob", "password": USERS["bob"]})
    alice.reload()
    ready(alice)
    alice.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Bob paints the fence.')")
    assert "Alice" not in on_screen(alice)
    store = srv.chat_dir
    assert len(user_files(store)) == 2
    assert "Alice" not in json.dumps(ChatStore(store).load("bob"))
    alice.context.close()
    bob.context.close()


def test_anonymous_visitors_with_a_chat_dir_keep_their_chats_apart(browser, anonymous_server):
    srv = anonymous_server
    first = open_page(browser, srv.url)
    send(first, "Visitor one likes pears.")
    second = open_page(browser, srv.url)
    assert "pears" not in on_screen(second)
    send(second, "Visitor two likes plums.")
    first.reload()
    ready(first)
    first.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Visitor one likes pears.')")
    assert "plums" not in on_screen(first)
    third = open_page(browser, srv.url)  # a new visitor sees neither
    assert "pears" not in on_screen(third) and "plums" not in on_screen(third)
    assert user_files(srv.chat_dir) == [], "an anonymous visitor's chats were written to a shared file"
    for page in (first, second, third):
        page.context.close()


def tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def test_saving_chats_does_not_pile_up_files_on_the_servers_disk(browser, anonymous_server, tmp_path):
    """Each save rewrote the whole store to a new temporary folder that was never deleted (and Gradio
    copied it into its cache once more): the files on disk grew with every save."""
    srv = anonymous_server

    def snapshot() -> tuple[int, int]:
        sizes = [tree_size(srv.gradio_tmp), tree_size(srv.tmp)]
        return sum(n for n, _ in sizes), sum(b for _, b in sizes)

    big = [m for i in range(10) for m in (
        {"role": "user", "content": f"Question {i}: " + "tell me about the sea " * 200},
        {"role": "assistant", "content": f"Answer {i}: " + "the sea is wide and deep " * 200})]
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"title": "Big chat", "messages": big}))
    page = open_page(browser, anonymous_server.url)
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(path))
    page.wait_for_function("() => document.querySelector('#chat-list').innerText.includes('Big chat')")
    system = page.get_by_label("System prompt")
    sizes = []
    for i in range(12):  # each edit of a setting is a save of the whole store
        system.fill(f"You are assistant number {i}.")
        system.blur()
        time.sleep(0.6)
        if i in (3, 11):
            time.sleep(1.5)
            sizes.append(snapshot())
    (n3, b3), (n11, b11) = sizes
    assert n11 <= n3 and b11 <= b3 + 64 * 1024, f"files on disk grew with saves: {sizes}"
    with page.expect_download() as dl:  # the export still works
        page.click("#export")
    saved = tmp_path / "conversation.json"
    dl.value.save_as(saved)
    assert json.loads(saved.read_text())["messages"][0]["content"].startswith("Question 0")
    page.context.close()
