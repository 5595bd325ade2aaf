"""What a hostile client tries, against the real app (issue 12): a battery of bad inputs over the
Gradio API (gradio_client), Gradio's REST routes and /v1. Every case must be answered with a
4xx (or, where Gradio's protocol carries handler errors in band, an error event) and a sentence a
user understands; never a 5xx; the server stays up and the model stays loaded.

Run with ``-s`` to see the table (case -> answer); it is also written to $QUANTLAB_BATTERY_TABLE.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from gradio_client import Client

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow

CHAT = ["Hi", [], "", 4, 0.0, 1.0, 0, 1.0, 0]  # /chat's positional inputs
MAX_PROMPT_TOKENS = 600
MAX_PROMPT_CHARS = 50_000
MAX_BODY = 2 * 2**20
INTERNAL = ("Internal error", "Traceback", "Exception")


def chat_args(**changes):
    names = ["message", "history", "system_prompt", "max_new_tokens", "temperature", "top_p", "top_k",
             "repetition_penalty", "seed"]
    args = list(CHAT)
    for k, v in changes.items():
        args[names.index(k)] = v
    return args


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The app as exposed (--listen: paths confined to --models-dir, no remote engine allowed), with
    small limits so the cases stay fast. LiveServer binds 127.0.0.1 regardless."""
    models = tmp_path_factory.mktemp("models")
    (models / "README.md").write_text("")
    (models / "notes.txt").write_text("not a model\n")
    settings = make_settings(listen=True, models_dir=models, max_prompt_tokens=MAX_PROMPT_TOKENS,
                             max_prompt_chars=MAX_PROMPT_CHARS, max_body_bytes=MAX_BODY)
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048, parallel=2))
        srv.loaded = srv.manager.current
        srv.gc = Client(srv.url, verbose=False)
        try:
            yield srv
        finally:
            srv.gc.close()


@pytest.fixture(scope="module")
def table(hostile):
    rows: list[tuple[str, str, str]] = []
    yield rows
    width = max(len(r[0]) for r in rows) if rows else 10
    text = "\n".join(f"{case:<{width}}  {status:<10}  {message}" for case, status, message in rows)
    print("\n" + text)
    out = os.environ.get("QUANTLAB_BATTERY_TABLE")
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


# --- the three transports ------------------------------------------------------------------------


def v1(srv, body=None, *, raw: bytes | None = None, method="POST", path="/v1/chat/completions"):
    if raw is None and body is not None:
        raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate goes as JSON's "\ud800"
    kwargs = {"content": raw, "headers": {"Content-Type": "application/json"}} if raw is not None else {}
    r = httpx.request(method, srv.url + path, timeout=60, **kwargs)
    try:
        err = r.json()["error"]
        return r.status_code, err["message"], err
    except (ValueError, KeyError, TypeError):
        return r.status_code, r.text[:200], None


def rest(srv, name, data=None, *, raw: bytes | None = None, event_id: str | None = None):
    """Gradio's REST: POST /gradio_api/call/<name>, then the SSE of the event. Returns (HTTP status
    of the first answer, or "event:error" when the handler's error came in band; the message)."""
    if event_id is None:
        if raw is not None:
            r = httpx.post(srv.url + f"/gradio_api/call/{name}", content=raw,
                           headers={"Content-Type": "application/json"}, timeout=60)
        else:
            r = httpx.post(srv.url + f"/gradio_api/call/{name}", json={"data": data}, timeout=60)
        if r.status_code != 200:
            return r.status_code, _message(r)
        event_id = r.json()["event_id"]
    with httpx.stream("GET", srv.url + f"/gradio_api/call/{name}/{event_id}", timeout=60) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, _message(r)
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("error", "complete"):
                data = json.loads(line[5:].strip())
                if event == "complete":
                    return 200, str(data)[:200]
                return "event:error", str(data.get("error") if isinstance(data, dict) else data)
    return "eof", ""


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return err.get("message", "")
        return str(body.get("detail") or err or body)[:200]
    return str(body)[:200]


def client(srv, api_name, *args):
    """gradio_client's predict: (\"error\", message) for the handler's gr.Error."""
    try:
        out = srv.gc.predict(*args, api_name=api_name)
    except Exception as exc:  # gradio_client raises AppError carrying the gr.Error's message
        return "error", str(exc)
    return 200, str(out)[:200]


# --- the battery ---------------------------------------------------------------------------------

DEEP = b'{"model": "default", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
MSG = [{"role": "user", "content": "Hi"}]


def body(**changes):
    out = {"model": "default", "messages": MSG, "max_tokens": 4}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not ...}


def long_text(chars: int) -> str:
    return ("lorem ipsum dolor sit amet " * (chars // 27 + 1))[:chars]


# (case id, transport, call, expected status, a word the message must contain)
V1_CASES = [
    ("v1 not JSON", lambda s: v1(s, raw=b"{nope"), 400, "not valid JSON"),
    ("v1 empty body", lambda s: v1(s, raw=b""), 400, "not valid JSON"),
    ("v1 JSON array", lambda s: v1(s, [1, 2]), 400, "object"),
    ("v1 50,000-deep JSON", lambda s: v1(s, raw=DEEP), 400, "too deeply"),
    ("v1 5 MB body", lambda s: v1(s, raw=b'{"x": "' + b"a" * (5 * 2**20) + b'"}'), 413, "larger than"),
    ("v1 lone surrogate", lambda s: v1(s, raw=b'{"model":"default","messages":[{"role":"user","content":"Hi \\ud800"}]}'),
     400, "surrogate"),
    ("v1 surrogate in system", lambda s: v1(s, body(messages=[{"role": "system", "content": "\ud800"}] + MSG)),
     400, "surrogate"),
    ("v1 surrogate in stop", lambda s: v1(s, body(stop=["\udfff"])), 400, "surrogate"),
    ("v1 no model field", lambda s: v1(s, body(model=...)), 400, "model"),
    ("v1 no messages", lambda s: v1(s, body(messages=...)), 400, "messages"),
    ("v1 messages []", lambda s: v1(s, body(messages=[])), 400, "messages"),
    ("v1 messages a string", lambda s: v1(s, body(messages="Hi")), 400, "messages"),
    ("v1 tool message without its call", lambda s: v1(s, body(messages=[{"role": "tool", "content": "x"}])), 400,
     "tool_call_id"),
    ("v1 role wizard", lambda s: v1(s, body(messages=[{"role": "wizard", "content": "x"}])), 400, "role"),
    ("v1 content a number", lambda s: v1(s, body(messages=[{"role": "user", "content": 42}])), 400, "content"),
    ("v1 image part", lambda s: v1(s, body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])), 400, "not supported"),
    ("v1 last message assistant", lambda s: v1(s, body(messages=[{"role": "assistant", "content": "x"}])), 400,
     "assistant"),
    ("v1 empty content", lambda s: v1(s, body(messages=[{"role": "user", "content": "  "}])), 400, "empty"),
    ("v1 max_tokens 0", lambda s: v1(s, body(max_tokens=0)), 400, "max_tokens"),
    ("v1 max_tokens 1e9", lambda s: v1(s, body(max_tokens=10**9)), 400, "max_new_tokens"),
    ("v1 max_tokens 'abc'", lambda s: v1(s, body(max_tokens="abc")), 400, "max_tokens"),
    ("v1 temperature -1", lambda s: v1(s, body(temperature=-1)), 400, "temperature"),
    ("v1 temperature Infinity", lambda s: v1(s, raw=b'{"model":"default","messages":[{"role":"user","content":"Hi"}],'
                                                   b'"temperature":Infinity}'), 400, "finite"),
    ("v1 temperature NaN", lambda s: v1(s, raw=b'{"model":"default","messages":[{"role":"user","content":"Hi"}],'
                                              b'"temperature":NaN}'), 400, "finite"),
    ("v1 top_p 0", lambda s: v1(s, body(top_p=0)), 400, "top_p"),
    ("v1 top_k -1", lambda s: v1(s, body(top_k=-1)), 400, "top_k"),
    ("v1 n above the slots", lambda s: v1(s, body(n=3)), 400, "at most 2"),
    ("v1 n 65", lambda s: v1(s, body(n=65)), 400, "n"),
    ("v1 5 stop strings", lambda s: v1(s, body(stop=list("abcde"))), 400, "stop"),
    ("v1 stop a number", lambda s: v1(s, body(stop=[5])), 400, "stop"),
    ("v1 seed 2**70", lambda s: v1(s, body(seed=2**70)), 400, "seed"),
    ("v1 tool without a name", lambda s: v1(s, body(tools=[{"type": "function", "function": {}}])), 400, "tools"),
    ("v1 tool named badly", lambda s: v1(s, body(tools=[{"type": "function", "function": {"name": "a b"}}])), 400,
     "tools"),
    ("v1 tool_choice required", lambda s: v1(s, body(tool_choice="required")), 400, "tool_choice"),
    ("v1 response_format json_schema without schema", lambda s: v1(s, body(response_format={
        "type": "json_schema", "json_schema": {"name": "x"}})), 400, "response_format"),
    ("v1 response_format xml", lambda s: v1(s, body(response_format={"type": "xml"})), 400, "response_format"),
    ("v1 top_logprobs 21", lambda s: v1(s, body(logprobs=True, top_logprobs=21)), 400, "top_logprobs"),
    ("v1 top_logprobs 3", lambda s: v1(s, body(top_logprobs=3)), 400, "top_logprobs"),
    ("v1 min_p 2", lambda s: v1(s, body(min_p=2)), 400, "min_p"),
    ("v1 presence_penalty -3", lambda s: v1(s, body(presence_penalty=-3)), 400, "presence_penalty"),
    ("v1 completions echo", lambda s: v1(s, {"model": "default", "prompt": "Hi", "echo": True},
                                         path="/v1/completions"), 400, "echo"),
    ("v1 completions token ids", lambda s: v1(s, {"model": "default", "prompt": [1, 2]}, path="/v1/completions"),
     400, "prompt"),
    ("v1 embeddings empty input", lambda s: v1(s, {"model": "default", "input": ""}, path="/v1/embeddings"),
     400, "input"),
    ("tokenize without content", lambda s: v1(s, {"text": "x"}, path="/tokenize"), 400, "content"),
    ("detokenize a negative id", lambda s: v1(s, {"tokens": [-1]}, path="/detokenize"), 400, "tokens"),
    ("v1 frequency_penalty 9", lambda s: v1(s, body(frequency_penalty=9)), 400, "frequency_penalty"),
    ("v1 logit_bias", lambda s: v1(s, body(logit_bias={"50256": -100})), 400, "logit_bias"),
    ("v1 functions", lambda s: v1(s, body(functions=[{"name": "f"}])), 400, "functions"),
    ("v1 unknown model", lambda s: v1(s, body(model="gpt-9")), 404, "does not exist"),
    ("v1 prompt over --max-prompt-chars", lambda s: v1(s, body(messages=[
        {"role": "user", "content": long_text(MAX_PROMPT_CHARS + 1)}])), 400, "max-prompt-chars"),
    ("v1 prompt over --max-prompt-tokens", lambda s: v1(s, body(messages=[
        {"role": "user", "content": long_text(MAX_PROMPT_TOKENS * 8)}])), 400, "prompt tokens"),
    ("v1 stream + bad temperature", lambda s: v1(s, body(stream=True, temperature=9)), 400, "temperature"),
    ("v1 stream_options a string", lambda s: v1(s, body(stream=True, stream_options="yes")), 400, "stream_options"),
    ("v1 GET chat/completions", lambda s: v1(s, method="GET"), 405, "POST"),
    ("v1 POST models", lambda s: v1(s, {}, path="/v1/models"), 405, "GET"),
    ("v1 unknown route", lambda s: v1(s, {}, path="/v1/engines"), 404, "Unknown endpoint"),
]

GRADIO_CASES = [
    ("gradio /chat empty message", lambda s: client(s, "/chat", *chat_args(message="   ")), "error", "empty"),
    ("gradio /chat message too long", lambda s: client(s, "/chat", *chat_args(message=long_text(MAX_PROMPT_CHARS + 5))),
     "error", "max-prompt-chars"),
    ("gradio /chat over --max-prompt-tokens", lambda s: client(s, "/chat", *chat_args(
        message=long_text(MAX_PROMPT_TOKENS * 8))), "error", "prompt tokens"),
    ("gradio /chat history a string", lambda s: client(s, "/chat", *chat_args(history="oops")), "error", "history"),
    ("gradio /chat history bad role", lambda s: client(s, "/chat", *chat_args(
        history=[{"role": "root", "content": "x"}])), "error", "role"),
    ("gradio /chat history of numbers", lambda s: client(s, "/chat", *chat_args(history=[1, 2, 3])), "error",
     "history"),
    ("gradio /chat max_new_tokens 0", lambda s: client(s, "/chat", *chat_args(max_new_tokens=0)), "error",
     "max_new_tokens"),
    ("gradio /chat temperature 'hot'", lambda s: client(s, "/chat", *chat_args(temperature="hot")), "error",
     "temperature"),
    ("gradio /chat top_p 2", lambda s: client(s, "/chat", *chat_args(top_p=2)), "error", "top_p"),
    ("gradio /chat top_k 1.5", lambda s: client(s, "/chat", *chat_args(top_k=1.5)), "error", "top_k"),
    ("gradio /chat repetition_penalty 0", lambda s: client(s, "/chat", *chat_args(repetition_penalty=0)), "error",
     "repetition_penalty"),
    ("gradio /chat seed 'x'", lambda s: client(s, "/chat", *chat_args(seed="x")), "error", "seed"),
    ("gradio /chat system_prompt a list", lambda s: client(s, "/chat", *chat_args(system_prompt=[1])), "error",
     "system_prompt"),
    ("gradio /stats last='abc'", lambda s: client(s, "/stats", "abc"), "error", "last"),
    ("gradio /stats last=-1", lambda s: client(s, "/stats", -1), "error", "last"),
    ("gradio /load_model ../ escape", lambda s: client(s, "/load_model", "../README.md", "llamacpp", "as file"),
     "error", "models directory"),
    ("gradio /load_model absolute outside", lambda s: client(s, "/load_model", "/etc/passwd", "llamacpp", "as file"),
     "error", "models directory"),
    ("gradio /load_model text file", lambda s: client(s, "/load_model", "notes.txt", "llamacpp", "as file"),
     "error", "not a GGUF"),
    ("gradio /load_model NUL byte", lambda s: client(s, "/load_model", "a\x00b", "llamacpp", "as file"),
     "error", "not a usable path"),
    ("gradio /load_model unknown backend", lambda s: client(s, "/load_model", "embedded", "tensorrt", "as file"),
     "error", "Unknown backend"),
    ("gradio /load_model unknown quant", lambda s: client(s, "/load_model", "embedded", "llamacpp", "Q9_9"),
     "error", "Unknown quantization"),
    ("gradio /load_model remote not allowed", lambda s: client(s, "/load_model", "m", "remote", "as served",
                                                               "http://169.254.169.254/latest", ""),
     "error", "allow-remote"),
    ("gradio /load_model remote bad URL", lambda s: client(s, "/load_model", "m", "remote", "as served",
                                                           "http://[::1", ""), "error", "URL"),
    ("gradio /evaluate text outside", lambda s: client(s, "/evaluate", ["llamacpp:Q4_1"], "/etc/passwd"),
     "error", "must be inside"),
    ("gradio /evaluate bad variant", lambda s: client(s, "/evaluate", ["llamacpp"], ""), "error", "Unknown variant"),
    ("gradio /evaluate window 1", lambda s: client(s, "/evaluate", ["llamacpp:Q4_1"], "", 1024, "embedded",
                                                   "llamacpp:Q4_1", 1), "error", "window"),
    ("gradio /compare no variants", lambda s: client(s, "/compare", "Hi", []), "error", "variant"),
    ("gradio /compare max_new_tokens -1", lambda s: client(s, "/compare", "Hi", ["llamacpp:Q4_1"], "embedded", -1),
     "error", "max_new_tokens"),
    ("gradio /delete_cached ../", lambda s: client(s, "/delete_cached", "gguf:../../etc"), "error", "not a folder of the cache"),
    ("gradio /delete_cached garbage", lambda s: client(s, "/delete_cached", "!!"), "error", "not a cached model id"),
]

REST_CASES = [
    ("REST unknown endpoint", lambda s: rest(s, "nope", []), 404, "No API endpoint"),
    ("REST bad event id", lambda s: rest(s, "chat", event_id="not-an-event"), 404, "Unknown or finished event"),
    ("REST 50,000-deep JSON", lambda s: rest(s, "chat", raw=b'{"data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
     400, "too deeply"),
    ("REST 5 MB body", lambda s: rest(s, "chat", raw=b'{"data": ["' + b"a" * (5 * 2**20) + b'"]}'), 413,
     "larger than"),
    ("REST not JSON", lambda s: rest(s, "chat", raw=b"{nope"), 400, "not valid JSON"),
    ("REST data not a list", lambda s: rest(s, "chat", raw=b'{"data": "Hi"}'), 400, "list of the endpoint"),
    ("REST /chat lone surrogate", lambda s: rest(s, "chat", raw=(
        b'{"data": ["Hi \\ud800", [], "", 4, 0, 1, 0, 1, 0]}')), "event:error", "surrogate"),
    ("REST /chat surrogate in history", lambda s: rest(s, "chat", raw=(
        b'{"data": ["Hi", [{"role": "user", "content": "\\udc00"}], "", 4, 0, 1, 0, 1, 0]}')), "event:error",
     "surrogate"),
    ("REST /chat surrogate in system prompt", lambda s: rest(s, "chat", raw=(
        b'{"data": ["Hi", [], "\\ud83d", 4, 0, 1, 0, 1, 0]}')), "event:error", "surrogate"),
    ("REST /compare surrogate prompt", lambda s: rest(s, "compare", raw=b'{"data": ["\\ud800", ["llamacpp:Q4_1"], "embedded", 4, 0, 0]}'),
     "event:error", "surrogate"),
    ("REST /chat missing inputs", lambda s: rest(s, "chat", []), "event:error", "input"),
    ("REST /chat temperature 99", lambda s: rest(s, "chat", chat_args(temperature=99)), "event:error", "temperature"),
    ("REST /stats last='abc'", lambda s: rest(s, "stats", ["abc"]), "event:error", "last"),
    ("REST /stats last=10**9", lambda s: rest(s, "stats", [10**9]), "event:error", "last"),
    ("REST /load_model relative escape", lambda s: rest(s, "load_model", ["notes.txt/../../README.md", "llamacpp",
                                                                           "as file", "", "", ""]),
     "event:error", "models directory"),
]

CASES = V1_CASES + GRADIO_CASES + REST_CASES


def test_the_battery_is_big_enough():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,call,status,word", CASES, ids=[c[0] for c in CASES])
def test_bad_input(hostile, table, name, call, status, word):
    got = call(hostile)
    got_status, message = got[0], got[1]
    table.append((name, str(got_status), " ".join(str(message).split())[:110]))
    assert got_status == status, (got_status, message)
    assert word.lower() in str(message).lower()
    assert not any(bad in str(message) for bad in INTERNAL), message
    if isinstance(got_status, int):
        assert 400 <= got_status < 500
    if len(got) == 3 and got[2] is not None:  # OpenAI-shaped
        assert set(got[2]) >= {"message", "type", "param", "code"}


def test_after_the_battery_the_server_is_up_and_the_model_unchanged(hostile, table):
    """Runs after the battery (file order): same model, /live, and a normal request still works."""
    assert httpx.get(hostile.url + "/live").status_code == 200
    assert hostile.manager.current is hostile.loaded
    r = httpx.post(hostile.url + "/v1/chat/completions", json=body(max_tokens=4), timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


# --- the no-ops that must keep working -----------------------------------------------------------


def test_openai_no_op_values_are_accepted(hostile):
    ok = body(response_format={"type": "text"}, logprobs=False, tool_choice="none", tools=[],
              frequency_penalty=0, presence_penalty=0, logit_bias={}, top_logprobs=0, max_tokens=2)
    r = httpx.post(hostile.url + "/v1/chat/completions", json=ok, timeout=60)
    assert r.status_code == 200, r.text


def test_v1_non_ascii_and_emoji_are_fine(hostile):
    r = httpx.post(hostile.url + "/v1/chat/completions", timeout=60,
                   json=body(messages=[{"role": "user", "content": "Grüße 👋 — 你好"}], max_tokens=2))
    assert r.status_code == 200, r.text
