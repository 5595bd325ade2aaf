"""Fast units of the /v1 translation: the reasoning splitter, tool-call parsing (whole and streamed),
the forced-call schema, and OpenAI bodies -> ChatRequests."""

from __future__ import annotations

import json
import random

import pytest

from backends.base import Constraint
from backends.errors import InvalidRequest
from serving.openai.convert import to_chat_request, to_completion_requests
from serving.openai.schema import ChatCompletionRequest, CompletionRequest
from serving.reasoning import ReasoningSplitter, split_reasoning
from serving.tool_calls import ToolCallStream, call_schema, parse_tool_calls


def feed_in_pieces(splitter: ReasoningSplitter, text: str, rng: random.Random) -> tuple[str, str]:
    reasoning, content, i = "", "", 0
    while i < len(text):
        k = rng.randint(1, 4)
        r, c = splitter.feed(text[i:i + k])
        reasoning, content, i = reasoning + r, content + c, i + k
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize("text,reasoning,content", [
    ("<think>plan: add</think>\n\nThe answer is 4.", "plan: add", "The answer is 4."),
    ("  <think>a < b</think>ok", "a < b", "ok"),
    ("No thinking here, <think> is just text.", "", "No thinking here, <think> is just text."),
    ("<think>cut while thinking", "cut while thinking", ""),  # unterminated: all reasoning
    ("<thin", "", "<thin"),  # never became a tag
    ("", "", ""),
    ("<think></think>Hi", "", "Hi"),
])
def test_reasoning_splitter_streamed_equals_whole(text, reasoning, content):
    assert split_reasoning(text) == (reasoning, content)
    rng = random.Random(7)
    for _ in range(20):  # any chunking gives the same split
        assert feed_in_pieces(ReasoningSplitter(), text, rng) == (reasoning, content)


def test_reasoning_splitter_releases_early_and_holds_only_a_possible_tag():
    s = ReasoningSplitter()
    assert s.feed("<think>step one") == ("step one", "")
    assert s.thinking
    assert s.feed(" then </thi") == (" then ", "")  # "</thi" may be the closing tag: held
    assert s.feed("nk>Answer") == ("", "Answer")
    assert not s.thinking
    assert s.feed(" more") == ("", " more")  # after the block, content passes straight through


def test_reasoning_splitter_starting_inside_a_think_block():
    assert split_reasoning("I should greet.</think>Hello!", thinking=True) == ("I should greet.", "Hello!")


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMES = ["get_weather", "get_time"]


@pytest.mark.parametrize("text,content,calls", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "",
     [("get_weather", {"city": "Paris"})]),
    ('Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
     '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', "Let me check.",
     [("get_weather", {"city": "Oslo"}), ("get_time", {})]),
    ('<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>', "", [("get_time", {})]),  # SmolLM2's list
    ('<tool_call>{"name": "get_time", "arguments": {}}', "", [("get_time", {})]),  # cut before the end tag
    ('{"name": "get_weather", "parameters": {"city": "Rome"}}', "", [("get_weather", {"city": "Rome"})]),  # Llama 3
    ('<|python_tag|>{"name": "get_time", "arguments": "{}"}', "", [("get_time", {})]),
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lima"}}, {"name": "get_time", "arguments": {}}]',
     "", [("get_weather", {"city": "Lima"}), ("get_time", {})]),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Bern"}', "", [("get_weather", {"city": "Bern"})]),
    ("The weather is nice.", "The weather is nice.", []),
    ('{"name": "rm_rf", "arguments": {}}', '{"name": "rm_rf", "arguments": {}}', []),  # not an offered tool
    ('<tool_call>{"name": "get_time", "arguments": {</tool_call>', '<tool_call>{"name": "get_time", "arguments": {</tool_call>', []),
    ('{"city": "Paris"}', '{"city": "Paris"}', []),  # JSON, but no call
])
def test_tool_calls_parsed_whole_and_streamed(text, content, calls):
    got_content, got = parse_tool_calls(text, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert all(c.id.startswith("call_") for c in got)
    assert len({c.id for c in got}) == len(got)
    rng = random.Random(3)
    for _ in range(10):
        stream, released, i = ToolCallStream(NAMES), "", 0
        while i < len(text):
            k = rng.randint(1, 5)
            released += stream.feed(text[i:i + k])
            i += k
        rest, streamed = stream.finish()
        assert [(c.name, json.loads(c.arguments)) for c in streamed] == calls
        if calls:
            assert (released + rest).strip() == content
        else:
            assert released + rest == text


def test_tool_call_stream_releases_plain_text_at_once():
    s = ToolCallStream(NAMES)
    assert s.feed("Sunny") == "Sunny"
    assert s.feed(" and warm <tool") == " and warm "  # "<tool" may start a call: held
    assert s.feed("kit>") == "<toolkit>"
    assert not s.capturing


def test_call_schema_pins_the_name_and_the_arguments():
    one = call_schema([WEATHER, TIME], only="get_weather")
    assert one["properties"]["name"] == {"const": "get_weather"}
    assert one["properties"]["arguments"] == WEATHER["function"]["parameters"]
    both = call_schema([WEATHER, TIME])
    assert [o["properties"]["name"]["const"] for o in both["anyOf"]] == NAMES


def chat(**body):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body})


def test_response_formats_become_constraints():
    req, _ = to_chat_request(chat(response_format={"type": "json_object"}))
    assert req.constraint == Constraint("json_object")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req, _ = to_chat_request(chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema, "strict": True}}))
    assert req.constraint.kind == "json_schema" and json.loads(req.constraint.schema) == schema
    req, _ = to_chat_request(chat(response_format={"type": "text"}))
    assert req.constraint is None
    with pytest.raises(InvalidRequest) as err:
        to_chat_request(chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}))
    assert err.value.param == "response_format"


def test_tools_and_tool_choice():
    req, plan = to_chat_request(chat(tools=[WEATHER, TIME]))
    assert [t["function"]["name"] for t in req.tools] == NAMES and req.constraint is None
    assert plan.names == tuple(NAMES) and not plan.forced
    req, plan = to_chat_request(chat(tools=[WEATHER, TIME], tool_choice="none"))
    assert req.tools == () and plan.names == ()
    req, plan = to_chat_request(chat(tools=[WEATHER, TIME], tool_choice="required"))
    assert plan.forced and json.loads(req.constraint.schema) == call_schema([WEATHER, TIME])
    req, plan = to_chat_request(chat(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
                                     parallel_tool_calls=False))
    assert json.loads(req.constraint.schema)["properties"]["name"] == {"const": "get_time"} and not plan.parallel
    # with a response format: a forced choice is a call; on auto, a call or the format
    req, plan = to_chat_request(chat(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}))
    assert plan.forced and json.loads(req.constraint.schema) == call_schema([WEATHER]) and req.constraint.param == "tools"
    req, plan = to_chat_request(chat(tools=[WEATHER], response_format={"type": "json_object"}))
    assert json.loads(req.constraint.schema) == {"anyOf": [call_schema([WEATHER]), {"type": "object"}]}
    assert req.constraint.param == "response_format"
    for bad, param in [({"tool_choice": "required"}, "tool_choice"),
                       ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
                       ({"functions": [{"name": "f"}]}, "functions"), ({"logit_bias": {"1": 5}}, "logit_bias"),
                       ({"top_logprobs": 2}, "top_logprobs"), ({"modalities": ["audio"]}, "modalities")]:
        with pytest.raises(InvalidRequest) as err:
            to_chat_request(chat(**bad))
        assert err.value.param == param, bad


def test_tool_round_trip_messages_map_to_the_contract():
    req, _ = to_chat_request(chat(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}], tools=[WEATHER]))
    user, assistant, tool = req.messages
    assert assistant.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert (tool.role, tool.tool_call_id, tool.name, tool.content) == ("tool", "call_1", "get_weather", "18 C, sunny")
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        to_chat_request(chat(messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]))


def test_samplers_logprobs_prefill_and_template_kwargs():
    req, _ = to_chat_request(chat(min_p=0.1, presence_penalty=0.5, mirostat=2, logprobs=True, top_logprobs=3,
                                  chat_template_kwargs={"enable_thinking": False}))
    assert req.params.min_p == 0.1 and req.params.presence_penalty == 0.5 and req.params.mirostat == 2
    assert set(req.params.samplers_set()) == {"min_p", "presence_penalty", "mirostat"}
    assert req.logprobs == 3 and req.template_kwargs == (("enable_thinking", False),)
    req, _ = to_chat_request(chat(logprobs=True))
    assert req.logprobs == 0
    req, _ = to_chat_request(chat(messages=[{"role": "user", "content": "Say hi"},
                                            {"role": "assistant", "content": "Hello"}]))
    assert req.continue_final


def test_completion_bodies():
    body = CompletionRequest.model_validate({"model": "m", "prompt": ["Once", "Twice"], "n": 2, "logprobs": 2,
                                             "max_tokens": 5, "stop": ["\n"]})
    reqs = to_completion_requests(body)
    assert [r.prompt for r in reqs] == ["Once", "Once", "Twice", "Twice"]
    assert reqs[0].messages == () and reqs[0].logprobs == 2 and reqs[0].stop == ("\n",)
    assert reqs[0].params.max_new_tokens == 5
    assert to_completion_requests(CompletionRequest.model_validate({"model": "m", "prompt": "x"}))[0].params.max_new_tokens == 16
    for bad, param in [({"echo": True}, "echo"), ({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"),
                       ({"prompt": ""}, "prompt"), ({"prompt": ["ok", ""]}, "prompt")]:
        with pytest.raises(InvalidRequest) as err:
            to_completion_requests(CompletionRequest.model_validate({"model": "m", "prompt": "x", **bad}))
        assert err.value.param == param, bad


def test_a_reply_opening_with_a_bracket_is_held_only_while_it_may_be_calls():
    s = ToolCallStream(NAMES)
    assert s.feed("[") == ""
    assert s.feed("1] see the docs") == "[1] see the docs"
    s = ToolCallStream(NAMES)
    assert s.feed("[ ") == "" and s.feed('{"name": "get_time", "arguments": {}}]') == ""
    assert [c.name for c in s.finish()[1]] == ["get_time"]


def test_n_choices_with_a_seed_sample_with_different_seeds():
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x", "n": 3, "seed": 41, "temperature": 1})
    assert [r.params.seed for r in to_completion_requests(body)] == [41, 42, 43]
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x", "n": 2})
    assert [r.params.seed for r in to_completion_requests(body)] == [None, None]
