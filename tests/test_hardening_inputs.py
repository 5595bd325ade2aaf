"""Bad input is a 4xx with a sentence, never a 500: lone UTF-16 surrogates in any string field of a
/v1 body (not only message content), tool parameters nested hundreds deep, Gradio's own page events
addressed by an fn_index no event has, /convert_to_gguf's quantizations of the wrong type, a remote
engine that reports a context length that is not a number. Real servers on 127.0.0.1, real clients
(httpx for bodies the openai client cannot encode: it refuses lone surrogates itself)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from gradio_client import Client

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow

BAD = "\ud800"  # a lone surrogate: valid JSON ("\\ud800"), not valid Unicode
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "description": "The city."},
                                     "unit": {"type": "string", "enum": ["C", "F"]}}, "required": ["city"]}}}


def with_(path: tuple, value, tree):
    """A copy of ``tree`` with ``value`` at ``path``."""
    tree = json.loads(json.dumps(tree))
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


def tool_turns(name="get_weather", arguments='{"city": "Paris"}'):
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": name, "content": "18 C"}]


def post_v1(url: str, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape "\ud800", as JSON allows
    return httpx.post(url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=300)


SURROGATES = [  # (id, body, the param the 400 names)
    ("tool description", {"tools": [with_(("function", "description"), f"Weather{BAD}", WEATHER)]}, "tools"),
    ("tool parameter description", {"tools": [with_(("function", "parameters", "properties", "city", "description"),
                                                    BAD, WEATHER)]}, "tools"),
    ("tool parameter enum", {"tools": [with_(("function", "parameters", "properties", "unit", "enum"), ["C", BAD],
                                             WEATHER)]}, "tools"),
    ("tool message name", {"tools": [WEATHER], "messages": tool_turns(name=f"get{BAD}")}, "messages"),
    ("tool-call arguments", {"tools": [WEATHER], "messages": tool_turns(arguments='{"city": "' + BAD + '"}')},
     "messages"),
    ("tool-call arguments, escaped", {"tools": [WEATHER], "messages": tool_turns(arguments=json.dumps({"city": BAD}))},
     "messages"),
    ("a key", {"tools": [with_(("function", "parameters", "properties", BAD), {"type": "string"}, WEATHER)]}, "tools"),
]


@pytest.mark.parametrize("extra, param", [c[1:] for c in SURROGATES], ids=[c[0] for c in SURROGATES])
def test_a_lone_surrogate_in_any_field_is_a_400(live_app, extra, param):
    body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}
    r = post_v1(live_app.url, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "surrogate" in error["message"] and error["param"] == param, error


def test_tool_parameters_nested_900_deep_are_a_400(live_app):
    deep = '{"type": "object", "properties": {"a": ' * 450 + '{"type": "string"}' + "}}" * 450
    raw = ('{"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": '
           '"function", "function": {"name": "f", "parameters": ' + deep + "}}]}")
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = httpx.post(live_app.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=300)
        assert r.status_code == 400, r.text
        assert "nests more than 64 levels" in r.json()["error"]["message"]
    ok = {"model": "default", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER]}
    assert post_v1(live_app.url, ok).status_code == 200  # a normal tool schema is untouched


@pytest.mark.parametrize("path, body, status, code", [
    ("/gradio_api/queue/join", {"data": [], "fn_index": 99999, "session_hash": "h1"}, 404, "unknown_fn_index"),
    ("/gradio_api/queue/join", {"data": [], "fn_index": -1, "session_hash": "h1"}, 404, "unknown_fn_index"),
    ("/gradio_api/queue/join", {"data": [], "fn_index": "99999", "session_hash": "h1"}, 404, "unknown_fn_index"),
    ("/gradio_api/run/predict", {"data": []}, 400, "missing_fn_index"),
    ("/gradio_api/run/predict", {"data": [], "fn_index": 99999}, 404, "unknown_fn_index"),
    ("/gradio_api/run/predict", {"data": [], "fn_index": "an event with inputs"}, 400, "missing_inputs"),
], ids=["join 99999", "join -1", "join '99999'", "predict no fn_index", "predict 99999", "predict no data"])
def test_gradio_page_events_with_a_bad_fn_index_are_a_4xx(live_app, path, body, status, code):
    if body.get("fn_index") == "an event with inputs":
        body = {**body, "fn_index": next(i for i, fn in live_app.app.state.blocks.fns.items() if fn.inputs)}
    r = httpx.post(live_app.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    # the page's real events still join the queue (a read-only one)
    fn_index = next(i for i, fn in live_app.app.state.blocks.fns.items() if fn.api_name == "model_status")
    joined = httpx.post(live_app.url + "/gradio_api/queue/join",
                        json={"data": [], "fn_index": fn_index, "session_hash": "h2", "trigger_id": None}, timeout=60)
    assert joined.status_code == 200 and joined.json()["event_id"]


def test_convert_to_gguf_with_a_number_for_quantizations_says_what_it_wants(client):
    with pytest.raises(Exception) as err:
        client.predict("some/model", 5, api_name="/convert_to_gguf")
    assert "quantizations must be a list" in str(err.value)


class _Engine(BaseHTTPRequestHandler):
    """An OpenAI-compatible /models that reports a context length that is not a number."""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": "abc"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_remote_engine_reporting_a_non_numeric_context_length_is_a_clear_load_error(tmp_path):
    engine = ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    try:
        with LiveServer(make_settings(cache_dir=tmp_path)) as srv:
            c = Client(srv.url, verbose=False)
            try:
                with pytest.raises(Exception) as err:
                    c.predict("m", "remote", "", f"http://127.0.0.1:{engine.server_port}/v1", api_name="/load_model")
                assert "max_model_len that is not a positive whole number" in str(err.value)
                assert "abc" not in str(err.value)  # the target's text is not echoed
                assert srv.manager.current is None
            finally:
                c.close()
    finally:
        engine.shutdown()
