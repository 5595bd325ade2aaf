"""The real `anthropic` client against the app's Anthropic Messages API (/v1/messages and
/v1/messages/count_tokens on the same port as the UI): plain and streamed text, a forced tool call
and the tool_result turn after it, token counting, the same greedy text as /v1/chat/completions,
and every refusal in Anthropic's error shape with the server still serving."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

MSG = [{"role": "user", "content": "Name three colours of the rainbow."}]
GREEDY = {"temperature": 0}  # this SDK has no sampler arguments: they travel as extra body fields
WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def claude(live_app):
    c = anthropic.Anthropic(base_url=live_app.url, api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def model(live_app) -> str:
    return live_app.manager.current.name


def test_messages_create_answers_with_a_text_block_and_usage(claude, model, live_app):
    msg = claude.messages.create(model=model, max_tokens=24, messages=MSG, extra_body=GREEDY)
    recorded = live_app.manager.metrics.recent(1)[0]  # the shared ChatService's record, under its own label
    assert (recorded.endpoint, recorded.completion_tokens) == ("messages", msg.usage.output_tokens)
    assert msg.type == "message" and msg.role == "assistant" and msg.model == model
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text.strip()
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 5 and 0 < msg.usage.output_tokens <= 24


def test_max_tokens_ends_the_turn_with_max_tokens(claude, model):
    msg = claude.messages.create(model=model, max_tokens=3, messages=MSG, extra_body=GREEDY)
    assert (msg.stop_reason, msg.usage.output_tokens) == ("max_tokens", 3)


def test_greedy_text_equals_chat_completions_and_the_stream(claude, model, live_app):
    system = "You are a terse assistant."
    msg = claude.messages.create(model=model, max_tokens=32, system=system, messages=MSG, extra_body=GREEDY)
    oai = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    chat = oai.chat.completions.create(model=model, max_tokens=32, extra_body=GREEDY,
                                       messages=[{"role": "system", "content": system}, *MSG])
    assert msg.content[0].text == chat.choices[0].message.content
    assert msg.usage.output_tokens == chat.usage.completion_tokens
    assert msg.usage.input_tokens == chat.usage.prompt_tokens
    # the system prompt as text blocks is the same prompt
    blocks = claude.messages.create(model=model, max_tokens=32, system=[{"type": "text", "text": system}],
                                    messages=MSG, extra_body=GREEDY)
    assert blocks.content[0].text == msg.content[0].text
    with claude.messages.stream(model=model, max_tokens=32, system=system, messages=MSG, extra_body=GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.index("content_block_start") < kinds.index("content_block_stop") < kinds.index("message_delta")
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(deltas) >= 2, "not streamed"
    assert "".join(deltas) == final.content[0].text == msg.content[0].text
    assert final.stop_reason == msg.stop_reason and final.usage.output_tokens == msg.usage.output_tokens
    assert final.usage.input_tokens == msg.usage.input_tokens


def test_stop_sequences_cut_the_reply(claude, model):
    base = claude.messages.create(model=model, max_tokens=40, messages=MSG, extra_body=GREEDY).content[0].text
    words = base.split()
    assert len(words) >= 3
    stop = words[2]
    cut = claude.messages.create(model=model, max_tokens=40, messages=MSG, extra_body=GREEDY, stop_sequences=[stop])
    text = "".join(b.text for b in cut.content)
    assert stop not in text and base.startswith(text)
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop) and cut.usage.output_tokens < 40
    with claude.messages.stream(model=model, max_tokens=40, messages=MSG, extra_body=GREEDY,
                                stop_sequences=["no such words here", stop]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence, "".join(b.text for b in final.content)) == \
        ("stop_sequence", stop, text)
    ended = claude.messages.create(model=model, max_tokens=40, messages=MSG, extra_body=GREEDY,
                                   stop_sequences=["no such words here"])
    assert ended.stop_sequence is None and ended.stop_reason in ("end_turn", "max_tokens")


def test_output_config_format_constrains_the_text_to_the_schema(claude, model):
    import json

    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"],
              "additionalProperties": False}
    msg = claude.messages.create(model=model, max_tokens=48, messages=MSG, extra_body=GREEDY,
                                 output_config={"format": {"type": "json_schema", "schema": schema}})
    value = json.loads(msg.content[0].text)
    assert list(value) == ["colour"] and value["colour"] in ("red", "green", "blue")


def test_tool_choice_any_forces_a_tool_use_and_a_tool_result_turn_is_answered(claude, model):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = claude.messages.create(model=model, max_tokens=64, messages=ask, tools=[WEATHER],
                                 tool_choice={"type": "any"}, extra_body=GREEDY)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    assert isinstance(uses[0].input, dict) and isinstance(uses[0].input.get("city"), str)
    with claude.messages.stream(model=model, max_tokens=64, messages=ask, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert streamed.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in streamed.content] == [("tool_use", "get_weather", uses[0].input)]
    turn = ask + [{"role": "assistant", "content": [b.model_dump() for b in msg.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                "content": "Sunny, 24 degrees."}]}]
    answer = claude.messages.create(model=model, max_tokens=48, messages=turn, tools=[WEATHER], extra_body=GREEDY)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.input_tokens > msg.usage.input_tokens  # the call and its result are in the prompt
    none = claude.messages.create(model=model, max_tokens=16, messages=ask, tools=[WEATHER],
                                  tool_choice={"type": "none"}, extra_body=GREEDY)
    assert none.stop_reason != "tool_use" and all(b.type == "text" for b in none.content)


def test_count_tokens_is_the_prompt_of_a_message(claude, model):
    counted = claude.messages.count_tokens(model=model, messages=MSG, system="Be brief.")
    msg = claude.messages.create(model=model, max_tokens=4, messages=MSG, system="Be brief.", extra_body=GREEDY)
    assert counted.input_tokens == msg.usage.input_tokens > 5
    with_tools = claude.messages.count_tokens(model=model, messages=MSG, tools=[WEATHER])
    assert with_tools.input_tokens > claude.messages.count_tokens(model=model, messages=MSG).input_tokens


@pytest.mark.parametrize("body, status, kind, words", [
    ({"messages": MSG}, 400, "invalid_request_error", "max_tokens: Field required"),
    ({"max_tokens": 0, "messages": MSG}, 400, "invalid_request_error", "max_tokens"),
    ({"max_tokens": 8, "messages": []}, 400, "invalid_request_error", "messages"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, 400,
     "invalid_request_error", "document blocks are not supported"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "aGk="}}]}]}, 400, "invalid_request_error", "not an image"),
    ({"max_tokens": 8, "messages": MSG, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, 400,
     "invalid_request_error", "no tool named 'nope'"),
    ({"max_tokens": 8, "messages": MSG, "model": "claude-sonnet-4-5"}, 404, "not_found_error", "claude-sonnet-4-5"),
])
def test_bad_input_is_an_anthropic_error_and_the_server_keeps_serving(claude, model, live_app, body, status, kind,
                                                                     words):
    r = httpx.post(live_app.url + "/v1/messages", json={"model": model, **body}, timeout=60)
    assert r.status_code == status
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == kind and words in err["error"]["message"]
    assert claude.messages.create(model=model, max_tokens=2, messages=MSG).usage.output_tokens > 0


def test_the_sdk_raises_the_status_error_of_its_kind(claude, model, live_app):
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model=model, max_tokens=8, messages=[], extra_body=GREEDY)
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="claude-haiku-4-5", messages=MSG)
    for raw in (b"{nope", b"[1]"):
        r = httpx.post(live_app.url + "/v1/messages/count_tokens", content=raw, timeout=60,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["type"] == "error"
    r = httpx.get(live_app.url + "/v1/messages", timeout=60)
    assert (r.status_code, r.json()["error"]["type"], r.headers["allow"]) == (405, "invalid_request_error", "POST")
    r = httpx.post(live_app.url + "/v1/messages/batches", json={}, timeout=60)
    assert (r.status_code, r.json()) == (404, {"type": "error", "error": {
        "type": "not_found_error", "message": "Unknown endpoint /v1/messages/batches."}})


def test_the_api_key_is_accepted_as_x_api_key_and_refused_in_anthropics_shape(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, api_key="sekrit", max_body_bytes=4096)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        name = srv.manager.current.name
        with anthropic.Anthropic(base_url=srv.url, api_key="sekrit", max_retries=0, timeout=120) as good:
            assert good.messages.count_tokens(model=name, messages=MSG).input_tokens > 5
            assert good.messages.create(model=name, max_tokens=2, messages=MSG).usage.output_tokens > 0
        with anthropic.Anthropic(base_url=srv.url, api_key="wrong", max_retries=0, timeout=120) as bad:
            with pytest.raises(anthropic.AuthenticationError) as exc:
                bad.messages.create(model=name, max_tokens=2, messages=MSG)
        assert exc.value.body == {"type": "error", "error": {"type": "authentication_error", "message": (
            "Missing or invalid API key: send 'x-api-key: <key>' or 'Authorization: Bearer <key>'.")}}
        # this SDK sends the key as Bearer; Anthropic's own API, older SDKs and coding agents as x-api-key
        body = {"model": name, "max_tokens": 2, "messages": MSG}
        keyed = httpx.post(srv.url + "/v1/messages", json=body, headers={"x-api-key": "sekrit"}, timeout=60)
        assert keyed.status_code == 200 and keyed.json()["usage"]["output_tokens"] > 0
        counted = httpx.post(srv.url + "/v1/messages/count_tokens", json={"model": name, "messages": MSG},
                             headers={"x-api-key": "sekrit"}, timeout=60)
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 5
        wrong = httpx.post(srv.url + "/v1/messages", json=body, headers={"x-api-key": "wrong"}, timeout=60)
        assert (wrong.status_code, wrong.json()["error"]["type"]) == (401, "authentication_error")
        big = httpx.post(srv.url + "/v1/messages", headers={"x-api-key": "sekrit"}, timeout=60,
                         json={**body, "messages": [{"role": "user", "content": "x" * 5000}]})
        assert (big.status_code, big.json()["error"]["type"]) == (413, "request_too_large")
        tags = httpx.get(srv.url + "/api/tags", headers={"x-api-key": "sekrit"}, timeout=60)
        assert tags.status_code == 200 and tags.json()["models"][0]["model"] == f"{name}:latest"
        openai_shape = httpx.get(srv.url + "/v1/models", headers={"x-api-key": "wrong"}, timeout=60)
        assert openai_shape.status_code == 401 and openai_shape.json()["error"]["code"] == "invalid_api_key"
