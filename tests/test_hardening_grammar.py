"""A JSON schema or grammar cannot take the server down: one request with ``maxLength`` 20000 (or a
pattern ``a{0,30000}``, or such a tool parameter under tool_choice required) used to overflow the
stack of llama.cpp's grammar parser and kill the process (SIGSEGV). Now it is a 400 naming the limit,
and the server keeps serving.

The crash reproductions run against ``python app.py`` in a subprocess (a segfault there fails the
test instead of killing pytest), through the real ``openai`` client; the bounds themselves also have
fast tests of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from backends.base import Constraint
from backends.errors import InvalidRequest
from backends.grammar_limits import (
    MAX_GBNF_NESTING,
    MAX_PATTERN_GROUPS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_REPEATS,
    check_gbnf,
    gbnf_shape,
    pattern_repeats,
)
from app import free_port
from tests.live_server import wait_healthy


def string_format(**schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", **schema}}}


def tool(**parameter) -> list[dict]:
    return [{"type": "function", "function": {"name": "note", "description": "Write a note.", "parameters": {
        "type": "object", "properties": {"text": {"type": "string", **parameter}}, "required": ["text"]}}}]


ASK = [{"role": "user", "content": "Say something."}]


# --- the server, in a subprocess ------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_url(tmp_path_factory, cache_dir):
    port = free_port()
    log_path = tmp_path_factory.mktemp("grammar-app") / "app.log"
    env = {**os.environ, "QUANTLAB_CACHE_DIR": str(cache_dir), "QUANTLAB_REQUEST_LOG": ""}
    with open(log_path, "w+") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--n-ctx", "2048"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url, proc, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)  # a shared CPU can be very slow


def assert_still_serving(url: str, proc, log_path) -> None:
    assert proc.poll() is None, f"the server died (exit {proc.returncode}): {log_path.read_text()[-2000:]}"
    reply = oai(url).chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=4, temperature=0)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1


def chat(**kw):
    return lambda c: c.chat.completions.create(model="default", messages=ASK, max_tokens=8, **kw)


def chat_stream(**kw):
    def go(c):
        for _ in c.chat.completions.create(model="default", messages=ASK, max_tokens=8, stream=True, **kw):
            pass
    return go


def complete(**kw):
    return lambda c: c.completions.create(model="default", prompt="Say", max_tokens=8, extra_body=kw)


CRASHES = [  # (id, request, the words the 400 must say, param)
    ("chat maxLength 20000", chat(response_format=string_format(maxLength=20000)), "1,000", "response_format"),
    ("chat pattern a{0,30000}", chat(response_format=string_format(pattern="^a{0,30000}$")), "1,000",
     "response_format"),
    ("chat stream maxLength 20000", chat_stream(response_format=string_format(maxLength=20000)), "1,000",
     "response_format"),
    ("tool maxLength 30000, required", chat(tools=tool(maxLength=30000), tool_choice="required"), "1,000", "tools"),
    ("tool pattern, named", chat(tools=tool(pattern="^a{0,30000}$"),
                                 tool_choice={"type": "function", "function": {"name": "note"}}), "1,000", "tools"),
    ("completions maxLength 20000", complete(response_format=string_format(maxLength=20000)), "1,000",
     "response_format"),
    ("completions pattern a{0,30000}", complete(response_format=string_format(pattern="^a{0,30000}$")), "1,000",
     "response_format"),
    ("json_object + schema maxLength 20000", chat(response_format={"type": "json_object", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "maxLength": 20000}}}}), "1,000", "response_format"),
    ("maxItems 20000", chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "items": {"type": "integer"}, "maxItems": 20000}}}), "1,000", "response_format"),
    ("nested groups in a pattern", chat(response_format=string_format(pattern="(" * 20000 + "a" + ")" * 20000)),
     f"at most {MAX_PATTERN_GROUPS}", "response_format"),
    ("quantifiers multiplied", chat(response_format=string_format(pattern="^((a{100}){100}){100}$")),
     f"at most {MAX_SCHEMA_REPEATS:,}", "response_format"),
    ("minLength 10**9", chat(response_format=string_format(minLength=10**9)), f"at most {MAX_SCHEMA_REPEATS:,}",
     "response_format"),
    # a const the grammar must write as U+0000: no token can, and llama.cpp aborted (SIGABRT)
    ("const NUL", chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "const": "\u0000"}}}), "U+0000", "response_format"),
    ("enum with NUL, completions", complete(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ["a", "b\u0000"]}}}), "U+0000", "response_format"),
    # one past what llama.cpp's parser accepts: refused by name, not by llama.cpp's log line
    ("maxLength 1001", chat(response_format=string_format(maxLength=MAX_GBNF_NESTING + 1)), "nests 1,001 groups",
     "response_format"),
]


@pytest.mark.slow
@pytest.mark.parametrize("send, words, param", [c[1:] for c in CRASHES], ids=[c[0] for c in CRASHES])
def test_a_schema_that_expands_too_far_is_a_400_and_the_server_keeps_serving(app_url, send, words, param):
    url, proc, log_path = app_url
    with pytest.raises(openai.BadRequestError) as err:
        send(oai(url))
    error = err.value.body
    assert err.value.status_code == 400
    assert words in error["message"] and error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert_still_serving(url, proc, log_path)


@pytest.mark.slow
def test_legitimate_structured_output_still_works(app_url):
    url, proc, log_path = app_url
    c = oai(url)
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}}, "required": ["name", "age"]}
    reply = c.chat.completions.create(model="default", messages=[{"role": "user", "content": "Describe a person."}],
                                      max_tokens=60, temperature=0, response_format={
                                          "type": "json_schema", "json_schema": {"name": "person", "schema": person}})
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"name", "age"} and len(value["name"]) <= 12 and isinstance(value["age"], int)
    # the largest maxLength llama.cpp builds a grammar for is still accepted
    reply = c.chat.completions.create(model="default", messages=ASK, max_tokens=6, temperature=0,
                                      response_format=string_format(maxLength=MAX_GBNF_NESTING))
    assert reply.choices[0].message.content.startswith('"')
    forced = c.chat.completions.create(model="default", messages=[{"role": "user", "content": "Note: buy milk"}],
                                       max_tokens=60, temperature=0, tools=tool(maxLength=40), tool_choice="required")
    call = forced.choices[0].message.tool_calls[0]
    assert call.function.name == "note" and len(json.loads(call.function.arguments)["text"]) <= 40
    assert_still_serving(url, proc, log_path)


# --- the bounds themselves (fast) ---------------------------------------------------------------------

def test_gbnf_nesting_is_measured_outside_literals_and_classes():
    assert gbnf_shape('root ::= "(((" [(] ( "a" ( "b" )? )*  # ((((\nx ::= "\\"(" y') == (2, 2, False)
    assert gbnf_shape("root ::= " + "(" * 5 + '"a"' + ")" * 5) == (5, 1, False)
    check_gbnf("root ::= " + "(" * MAX_GBNF_NESTING + '"a"' + ")" * MAX_GBNF_NESTING)
    with pytest.raises(InvalidRequest) as err:
        check_gbnf("root ::= " + "(" * (MAX_GBNF_NESTING + 1) + '"a"' + ")" * (MAX_GBNF_NESTING + 1))
    assert err.value.param == "response_format" and f"{MAX_GBNF_NESTING + 1:,} groups deep" in str(err.value)


@pytest.mark.parametrize("gbnf, nul", [('root ::= "a\\u0000"', True), ('root ::= "b" | "\\x00"', True),
                                       ("root ::= [\\x00]", True), ('root ::= "\\\\x00"', False),
                                       ("root ::= [\\x00-\\x1F]", False), ('root ::= [^\\x00] "\\u0001"', False)])
def test_a_grammar_that_requires_nul_is_refused(gbnf, nul):
    """No token yields U+0000: a grammar that requires it leaves nothing to sample, and llama.cpp aborts."""
    assert gbnf_shape(gbnf)[2] is nul
    if nul:
        with pytest.raises(InvalidRequest, match="U\\+0000"):
            check_gbnf(gbnf)


def test_pattern_repetitions_multiply_through_groups():
    assert pattern_repeats("^a{0,30000}$") == 30002
    assert pattern_repeats("^((a{100}){100}){100}$") == 1_000_002
    assert pattern_repeats(r"^\d{3}-[a-z{]{2,4}(x|y){5}$") == 1 + 3 + 1 + 4 + 5 * 2 + 1
    assert pattern_repeats("^[^@]+@[^@]+$") == 5


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "minLength": MAX_SCHEMA_REPEATS + 1}, "minLength at $"),
    ({"type": "object", "properties": {"a": {"type": "array", "maxItems": 60_000},
                                       "b": {"type": "string", "maxLength": 60_000}}}, "120,000 repetitions"),
    (json.loads('{"type": "array", "items": ' * 40 + "{}" + "}" * 40), f"more than {MAX_SCHEMA_DEPTH} levels"),
], ids=["one keyword", "summed", "deep"])
def test_every_engine_gets_only_bounded_schemas(schema, words):
    """The bound is on the Constraint, so it holds for llama.cpp, transformers (llguidance) and a remote
    engine alike, and for a tool call's schema (named by its field)."""
    with pytest.raises(InvalidRequest) as err:
        Constraint("json_schema", json.dumps(schema), param="tools")
    assert words in str(err.value) and err.value.param == "tools"
    Constraint("json_schema", json.dumps({"type": "string", "maxLength": 20000}))  # llguidance builds it lazily
