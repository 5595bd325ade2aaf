"""The remote backend's trust boundary, through the real app and the real gradio_client: the
server's --remote-api-key reaches its configured engine only, --allow-remote cannot be escaped with
dot segments, an engine that never answers cannot hold a load, and no error echoes what a target served.

The engines here are real HTTP servers on 127.0.0.1 (http.server in a thread) that record every
request's path and Authorization header: a load only lists /v1/models, which is all these need.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gradio_client import Client

from tests.conftest import LiveServer, make_settings

SERVER_KEY = "server-secret-key"
CALLER_KEY = "caller-own-key"
MARKER = "INTERNAL-MARKER-7f3a"  # what a target serves; never in an error


class RecordingEngine:
    """An OpenAI-shaped /v1/models on 127.0.0.1 that records (path, Authorization) of each request.
    ``models``: the ids it lists; any other path answers 200 with a body holding MARKER."""

    def __init__(self, models: tuple[str, ...] = ("m",)):
        self.seen: list[tuple[str, str | None]] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                engine.seen.append((self.path, self.headers.get("Authorization")))
                if self.path == "/v1/models":
                    body = json.dumps({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "t"}
                                                                   for m in models]}).encode()
                    kind = "application/json"
                else:
                    body, kind = f"<html>{MARKER} admin console</html>".encode(), "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def keys(self) -> list[str | None]:
        return [auth for _, auth in self.seen]

    def __enter__(self) -> RecordingEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def load(c: Client, model: str, api_base: str = "", api_key: str = "") -> str:
    return c.predict(model, "remote", "as served", api_base, api_key, api_name="/load_model")


def load_error(c: Client, model: str, api_base: str = "", api_key: str = "") -> str:
    with pytest.raises(Exception) as err:
        load(c, model, api_base, api_key)
    return str(err.value)


def test_the_server_key_goes_to_its_configured_engine_only(cache_dir):
    with RecordingEngine() as own, RecordingEngine() as other:
        settings = make_settings(cache_dir=cache_dir, backend="remote", api_base=own.url + "/v1",
                                 remote_api_key=SERVER_KEY)
        with LiveServer(settings) as srv:
            c = Client(srv.url, verbose=False)
            try:
                assert "Loaded m" in load(c, "m")  # the configured engine: the server's key
                assert own.keys() == [f"Bearer {SERVER_KEY}"]
                # a URL of the caller's, as api_base or as the model: the caller's key or none
                assert "Loaded m" in load(c, "m", other.url + "/v1")
                assert "Loaded m" in load(c, other.url + "/v1#m")
                assert "Loaded m" in load(c, "m", other.url + "/v1", CALLER_KEY)
                assert other.keys() == [None, None, f"Bearer {CALLER_KEY}"]
                # the configured engine named as a model URL is still the configured engine
                assert "Loaded m" in load(c, own.url + "/v1#m")
                assert own.keys() == [f"Bearer {SERVER_KEY}"] * 2
                assert srv.manager.current.details["api_base"] == own.url + "/v1"
            finally:
                c.close()
        assert all(SERVER_KEY not in str(auth) for auth in other.keys())


def test_allow_remote_prefix_cannot_be_escaped_with_dot_segments(cache_dir, tmp_path):
    with RecordingEngine() as engine:
        settings = make_settings(cache_dir=cache_dir, listen=True, models_dir=tmp_path,
                                 allow_remote=[engine.url + "/v1"])
        with LiveServer(settings) as srv:
            c = Client(srv.url, verbose=False)
            try:
                for escape in ("/v1/../admin", "/v1/%2e%2e/admin", "/v1/%2E%2E/admin", "/v1/.%2e/admin",
                               "/v1/%252e%252e/admin", "/v1/..;/admin", "/v1\\..\\admin", "/v1%2f..%2fadmin"):
                    msg = load_error(c, "m", engine.url + escape)
                    assert "does not allow that remote engine" in msg, (escape, msg)
                    msg = load_error(c, engine.url + escape + "#m")
                    assert "does not allow that remote engine" in msg, (escape, msg)
                assert engine.seen == []  # refused before any request left the server
                assert "Loaded m" in load(c, "m", engine.url + "/v1")  # the prefix itself still works
                assert [path for path, _ in engine.seen] == ["/v1/models"]
            finally:
                c.close()


@pytest.mark.timeout(120)  # without a load timeout the load waits 300 s: this fails instead of hanging
def test_an_engine_that_never_answers_fails_the_load_and_frees_the_queue(cache_dir):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    dead_url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    try:
        with RecordingEngine() as engine, LiveServer(make_settings(cache_dir=cache_dir, remote_timeout=2)) as srv:
            c = Client(srv.url, verbose=False)
            try:
                msg = load_error(c, "m", dead_url)
                assert "Remote engine unreachable" in msg, msg
                assert srv.manager.loading is None and "timed out" not in msg
                assert "Loaded m" in load(c, "m", engine.url + "/v1")  # the load queue is free again
            finally:
                c.close()
    finally:
        silent.close()


def test_errors_never_echo_what_the_target_serves(cache_dir):
    with RecordingEngine(models=(f"{MARKER}-private-model",)) as engine, \
            LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            msg = load_error(c, "m", engine.url + "/v1")  # an engine that does not serve "m"
            assert "does not serve 'm'" in msg and MARKER not in msg, msg
            msg = load_error(c, "m", engine.url + "/console")  # a 200 page that is no model list
            assert "unreachable" in msg and MARKER not in msg, msg
            assert MARKER not in json.dumps(srv.manager.status())
        finally:
            c.close()
