"""Who the credentials name, which address a client has, what an open server shows: the API key
never logs in as a user (nor reads her --chat-dir chats), X-Forwarded-For is believed from the
configured proxies only, the 429 says what Retry-After says, --listen without auth warns and keeps
paths out of /health, and a trailing slash reaches the /v1 handler. Real app, real clients."""

from __future__ import annotations

import json
import logging
import re
import uuid
from types import SimpleNamespace

import httpx
import openai
import pytest
from gradio_client import Client

from backends.base import ModelSpec
from backends.errors import Busy
from serving.chat_store import ChatStore, browser_secret
from serving.ratelimit import RateLimiter
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow

KEY = "sk-hardening-key-42"
SECRET = "alice-private-plans-" + uuid.uuid4().hex[:8]
MSG = [{"role": "user", "content": "Hi"}]


# --- the API key is one identity, never a user's --------------------------------------------------

def gradio_login(url: str, user: str, password: str) -> httpx.Client | None:
    """An HTTP session logged in through Gradio's login form, None if the login is refused."""
    http = httpx.Client(base_url=url, timeout=60)
    r = http.post("/login", data={"username": user, "password": password})
    if r.status_code != 200:
        http.close()
        return None
    return http


def run_event(http: httpx.Client, fn_index: int, data: list) -> list:
    """Run one of the page's events (private ones too, as the page does) through Gradio's queue."""
    session = uuid.uuid4().hex
    r = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                   "event_data": None, "trigger_id": None})
    assert r.status_code == 200, r.text
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    assert msg.get("success"), msg
                    return msg["output"]["data"]
    raise AssertionError("the event never completed")


def fn_index(srv: LiveServer, name: str) -> int:
    found = [i for i, fn in srv.app.state.blocks.fns.items() if getattr(fn.fn, "__name__", "") == name]
    assert len(found) == 1, (name, found)
    return found[0]


@pytest.fixture(scope="module")
def chats_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat-auth")
    users = folder / "users.txt"
    users.write_text("alice:wonderland\nbob:looking-glass\n")
    chat_dir = folder / "chats"
    store = ChatStore(chat_dir)
    chat = {"id": "a1", "title": SECRET, "renamed": True, "created": 1.0, "updated": 1.0,
            "messages": [{"role": "user", "content": SECRET}], "versions": {}, "params": []}
    store.save("alice", {"current": "a1", "chats": {"a1": chat}})
    settings = make_settings(auth=str(users), api_key=KEY, chat_dir=chat_dir, cache_dir=folder / "cache")
    with LiveServer(settings) as srv:
        srv.chat_dir, srv.alice_file = chat_dir, store.path("alice")
        yield srv


def test_the_api_key_is_no_password_for_a_user(chats_server):
    url = chats_server.url
    for user in ("alice", "bob", "nobody", ""):
        assert gradio_login(url, user, KEY) is None, f"the API key logged in as {user!r}"
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=(user, KEY), verbose=False)
    assert gradio_login(url, "alice", "looking-glass") is None  # bob's password is not alice's
    c = Client(url, auth=("api", KEY), verbose=False)  # the key's own identity
    try:
        assert c.predict(api_name="/model_status")
    finally:
        c.close()


def test_the_key_login_never_reads_or_writes_a_users_chats(chats_server):
    before = chats_server.alice_file.read_bytes()
    restore, delete = fn_index(chats_server, "restore"), fn_index(chats_server, "delete_current")
    alice = gradio_login(chats_server.url, "alice", "wonderland")
    assert alice is not None
    try:  # the event as the page runs it shows alice her chats (so the call below can fail)
        assert SECRET in json.dumps(run_event(alice, restore, [None]))
    finally:
        alice.close()
    api = gradio_login(chats_server.url, "api", KEY)
    assert api is not None
    try:
        assert SECRET not in json.dumps(run_event(api, restore, [None]))
        run_event(api, delete, [None, None])
        run_event(api, restore, [None])
    finally:
        api.close()
    assert chats_server.alice_file.read_bytes() == before
    assert sorted(p.name for p in chats_server.chat_dir.iterdir()) == [chats_server.alice_file.name]


def test_the_browser_chat_key_goes_to_logged_in_clients_only(chats_server):
    """What README's "Who may do what" promises of the key the browser encrypts chats with."""
    key = browser_secret(chats_server.manager.cache_dir)
    assert key not in httpx.get(chats_server.url + "/", follow_redirects=True).text
    assert httpx.get(chats_server.url + "/config").status_code == 401
    alice = gradio_login(chats_server.url, "alice", "wonderland")
    try:
        assert key in alice.get("/config").text  # the browser needs it: not a secret from the app's users
    finally:
        alice.close()


def test_an_auth_user_named_like_the_key_identity_is_refused_at_start(tmp_path):
    from app import create_app

    with pytest.raises(ValueError, match="'api'"):
        create_app(make_settings(auth="api:secret", api_key=KEY, cache_dir=tmp_path))


# --- rate limits: the client's own address unless a configured proxy names another ---------------

@pytest.fixture
def frozen_clock(monkeypatch):
    """The rate limiter's clock (only its own: the server's event loop keeps the real one), frozen so
    a bucket refills only when the test moves it, however slowly the replies come."""
    clock = [1000.0]
    monkeypatch.setattr("serving.ratelimit.time", SimpleNamespace(monotonic=lambda: clock[0]))
    return clock


def limited_server(cache_dir, **extra) -> LiveServer:
    srv = LiveServer(make_settings(cache_dir=cache_dir, rate_limit_rpm=2, **extra))
    srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1))
    return srv


def ask(url: str, forwarded_for: str | None = None, source: str = "127.0.0.1") -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=300) as http:
        return http.post(url + "/v1/chat/completions", headers=headers,
                         json={"model": "default", "messages": MSG, "max_tokens": 1})


def test_a_rotated_x_forwarded_for_gets_no_fresh_bucket_by_default(cache_dir, frozen_clock):
    with limited_server(cache_dir) as srv:
        codes = [ask(srv.url, f"203.0.113.{i}").status_code for i in range(1, 5)]
        assert codes == [200, 200, 429, 429], codes
        frozen_clock[0] += 0.7  # 29.3 s to the next token
        busy = ask(srv.url, "198.51.100.7")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "30"
        assert "retry in 30 s" in busy.json()["error"]["message"]  # the message says what the header says


def test_forwarded_for_is_believed_from_a_configured_proxy_only(cache_dir, frozen_clock):
    with limited_server(cache_dir, forwarded_allow_ips="127.0.0.1") as srv:
        # through the trusted proxy (127.0.0.1), each forwarded client has its own bucket
        assert [ask(srv.url, "203.0.113.1").status_code for _ in range(3)] == [200, 200, 429]
        assert ask(srv.url, "203.0.113.2").status_code == 200
        # another peer (127.0.0.2) is no proxy of ours: its header changes nothing
        codes = [ask(srv.url, f"198.51.100.{i}", source="127.0.0.2").status_code for i in range(1, 4)]
        assert codes == [200, 200, 429]


def test_the_429_message_and_retry_after_agree_in_whole_seconds(frozen_clock):
    limiter = RateLimiter(requests_per_minute=1)
    with limiter.slot("c"):
        pass
    for elapsed, expected in ((0.7, 60), (10.2, 50), (59.9, 1)):  # 59.3 s, 49.8 s, 0.1 s left
        frozen_clock[0] = 1000.0 + elapsed
        with pytest.raises(Busy) as err:
            with limiter.slot("c"):
                pass
        assert err.value.retry_after == expected
        assert f"retry in {expected} s" in str(err.value)


# --- an open, exposed server: a warning, no paths in /health ---------------------------------------

def test_listen_without_credentials_logs_a_warning(caplog, tmp_path):
    from app import create_app

    with caplog.at_level(logging.WARNING, logger="quantlab"):
        create_app(make_settings(listen=True, cache_dir=tmp_path))
    assert any("without --auth or --api-key" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quantlab"):
        create_app(make_settings(listen=True, api_key=KEY, cache_dir=tmp_path))
    assert not any("without --auth or --api-key" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    root = tmp_path_factory.mktemp("exposed")
    (root / "models").mkdir()
    with LiveServer(make_settings(listen=True, models_dir=root / "models", cache_dir=root / "cache")) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1))
        srv.root = root
        yield srv


def test_health_of_an_open_exposed_server_shows_file_names_not_paths(exposed):
    junk = exposed.root / "models" / "junk.gguf"
    junk.write_text("not a model\n" * 10)
    with pytest.raises(Exception):
        exposed.manager.load(ModelSpec(source=str(junk), backend="llamacpp"))
    r = httpx.get(exposed.url + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["model"]["source"].endswith(".gguf") and body["last_error"]
    text = r.text
    source = exposed.manager.current.source
    assert source.startswith("/") and source not in text
    for secret in (str(exposed.root), str(exposed.manager.cache_dir)):
        assert secret not in text, (secret, text)
    assert not re.search(r'"/[^"\s]*/', text), text  # no absolute path in any field


def test_a_trailing_slash_reaches_the_same_v1_handler(exposed):
    oai = openai.OpenAI(base_url=exposed.url + "/v1", api_key="x", max_retries=0)
    expected = oai.chat.completions.create(model="default", messages=MSG, max_tokens=4, temperature=0)
    body = {"model": "default", "messages": MSG, "max_tokens": 4, "temperature": 0}
    r = httpx.post(exposed.url + "/v1/chat/completions/", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected.choices[0].message.content
    assert httpx.get(exposed.url + "/v1/models/").json()["data"][0]["id"] == oai.models.list().data[0].id
    assert httpx.post(exposed.url + "/tokenize/", json={"content": "Hi"}).json()["tokens"]
    wrong = httpx.get(exposed.url + "/v1/chat/completions/")  # a wrong method still says which one
    assert wrong.status_code == 405 and "use POST" in wrong.json()["error"]["message"]
