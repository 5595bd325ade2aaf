"""OpenAI's Responses API (POST /v1/responses) on a real server with the embedded model, through the
real clients: the openai SDK's ``responses.create`` / ``responses.stream`` / ``responses.parse`` and
the OpenAI Agents SDK's default (Responses) model running an agent with a function tool."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from pydantic import BaseModel

QUESTION = "Name three colours of the rainbow."
SHORT = "Say hello."  # the embedded model answers it in about 20 tokens and stops
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def oai(live_oai):
    return live_oai


@pytest.fixture(scope="module")
def model(oai) -> str:
    return oai.models.list().data[0].id


def test_a_plain_response_answers_like_chat_completions(oai, model, live_app):
    r = oai.responses.create(model=model, input=QUESTION, max_output_tokens=32, temperature=0)
    assert "responses" in [s.endpoint for s in live_app.manager.metrics.recent(3)]  # counted under its own label
    assert r.object == "response" and r.id.startswith("resp_") and r.status in ("completed", "incomplete")
    assert [o.type for o in r.output] == ["message"]
    assert r.output_text.strip()
    chat = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=32, temperature=0)
    assert r.output_text == chat.choices[0].message.content  # greedy: the same model, the same prompt
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.store is True  # kept (in memory) for a previous_response_id


def test_instructions_and_message_items_are_the_system_and_user_turns(oai, model):
    r = oai.responses.create(model=model, instructions="You are a pirate.", max_output_tokens=24, temperature=0,
                             input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    chat = oai.chat.completions.create(model=model, max_tokens=24, temperature=0, messages=[
        {"role": "system", "content": "You are a pirate."}, {"role": "user", "content": QUESTION}])
    assert r.output_text == chat.choices[0].message.content
    assert r.instructions == "You are a pirate."


def test_previous_response_id_continues_the_kept_conversation(oai, model):
    first = oai.responses.create(model=model, instructions="Be brief.", input="My name is Ada.", temperature=0,
                                 max_output_tokens=24)
    then = oai.responses.create(model=model, previous_response_id=first.id, input="What is my name?", temperature=0,
                                max_output_tokens=24)
    assert then.previous_response_id == first.id
    whole = oai.responses.create(model=model, temperature=0, max_output_tokens=24, input=[
        {"role": "user", "content": "My name is Ada."}, *[o.model_dump(exclude_none=True) for o in first.output],
        {"role": "user", "content": "What is my name?"}])
    # the same conversation (instructions are not carried over, as OpenAI does): the same prompt and answer
    assert then.usage.input_tokens == whole.usage.input_tokens and then.output_text == whole.output_text
    chained = list(oai.responses.create(model=model, previous_response_id=then.id, input="Thanks.", stream=True,
                                        temperature=0, max_output_tokens=8))
    assert chained[-1].response.usage.input_tokens > then.usage.input_tokens  # a streamed one continues too


def test_a_response_made_with_store_false_is_not_kept(oai, model):
    r = oai.responses.create(model=model, input="Hi", store=False, max_output_tokens=4)
    assert r.store is False
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=model, input="Again", previous_response_id=r.id)
    assert exc.value.body["param"] == "previous_response_id" and r.id in exc.value.body["message"]


def test_max_output_tokens_cut_is_an_incomplete_response(oai, model):
    r = oai.responses.create(model=model, input="Write a long story about a dragon.", max_output_tokens=3,
                             temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_streamed_events_come_in_the_sdks_order(oai, model):
    full = oai.responses.create(model=model, input=QUESTION, max_output_tokens=32, temperature=0)
    events = list(oai.responses.create(model=model, input=QUESTION, max_output_tokens=32, temperature=0,
                                       stream=True))
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2, "not streamed"
    first, last = types.index("response.output_text.delta"), len(types) - 1 - types[::-1].index(
        "response.output_text.delta")
    assert types[:first] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"]
    assert set(types[first:last + 1]) == {"response.output_text.delta"}
    assert types[last + 1:] == ["response.output_text.done", "response.content_part.done",
                                "response.output_item.done", f"response.{full.status}"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert text == full.output_text
    assert events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens == full.usage.output_tokens
    item_id = events[2].item.id
    assert all(d.item_id == item_id for d in deltas) and events[-2].item.id == item_id


def test_the_sdks_stream_helper_accumulates_the_response(oai, model):
    with oai.responses.stream(model=model, input=SHORT, max_output_tokens=64, temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text and final.status == "completed"


def test_a_forced_function_call_then_its_output_then_a_text_answer(oai, model):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = oai.responses.create(model=model, input=ask, tools=[WEATHER], tool_choice="required", temperature=0,
                             max_output_tokens=64)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    assert calls[0].call_id and calls[0].id.startswith("fc_")
    follow = ask + [calls[0].model_dump(exclude_none=True),
                    {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C"}]
    answer = oai.responses.create(model=model, input=follow, tools=[WEATHER], tool_choice="none", temperature=0,
                                  max_output_tokens=48)
    assert [o.type for o in answer.output] == ["message"] and answer.output_text.strip()
    # the call and its output reached the prompt as chat completions' assistant tool_calls + tool message do
    chat = oai.chat.completions.create(model=model, temperature=0, max_tokens=48, messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": calls[0].arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].call_id, "content": "Sunny, 24 C"}])
    assert answer.output_text == chat.choices[0].message.content
    assert answer.usage.input_tokens == chat.usage.prompt_tokens


def test_a_streamed_function_call_has_its_argument_events(oai, model):
    events = list(oai.responses.create(model=model, input="What is the weather in Rome?", tools=[WEATHER],
                                       tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
                                       max_output_tokens=64, stream=True))
    types = [e.type for e in events]
    assert types[-5:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    added, done = events[-5].item, events[-2].item
    assert added.type == done.type == "function_call" and added.id == done.id and added.call_id == done.call_id
    assert json.loads(events[-3].arguments) == json.loads(done.arguments) and "city" in json.loads(done.arguments)
    assert events[-1].response.output[-1].name == "get_weather"


class City(BaseModel):
    name: str
    country: str


CITY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
               "required": ["name", "country"], "additionalProperties": False}


def test_text_format_json_schema_constrains_the_output(oai, model):
    r = oai.responses.create(model=model, input="Name a city in France as JSON.", temperature=0, max_output_tokens=64,
                             text={"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA,
                                              "strict": True}})
    assert set(json.loads(r.output_text)) == {"name", "country"}
    assert r.text.format.type == "json_schema"
    parsed = oai.responses.parse(model=model, input="Name a city in France as JSON.", temperature=0,
                                 max_output_tokens=64, text_format=City)
    assert isinstance(parsed.output_parsed, City) and parsed.output_parsed.name
    obj = oai.responses.create(model=model, input="Describe Paris as JSON.", temperature=0, max_output_tokens=48,
                               text={"format": {"type": "json_object"}})
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)
    else:
        assert obj.output_text.lstrip().startswith("{")


def test_the_agents_sdk_runs_an_agent_with_a_tool_on_its_default_model(live_app, model):
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"It is sunny in {city}."

    client = AsyncOpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    agents.set_tracing_disabled(True)
    responses_model = agents.OpenAIResponsesModel(model=model, openai_client=client)
    settings = agents.ModelSettings(temperature=0, max_tokens=64, tool_choice="required")
    agent = agents.Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                         model=responses_model, model_settings=settings, reset_tool_choice=True)
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert len(seen) == 1 and seen[0]
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"
    assert isinstance(result.final_output, str) and result.final_output.strip()

    async def streamed():  # the SDK's streamed run reads the events as they come (its own client: its loop)
        again = AsyncOpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        run = agents.Runner.run_streamed(agent.clone(model=agents.OpenAIResponsesModel(model=model,
                                                                                       openai_client=again)),
                                         "What is the weather in Paris?", max_turns=3)
        raw = [e.data.type async for e in run.stream_events() if e.type == "raw_response_event"]
        return run, raw

    run, raw = asyncio.run(streamed())
    assert len(seen) == 2 and run.final_output == result.final_output  # greedy: the same run again
    assert raw.count("response.completed") == 2 and "response.function_call_arguments.delta" in raw


BAD = [
    ({"input": QUESTION}, "model"),
    ({"model": "default"}, "input"),
    ({"model": "default", "input": QUESTION, "previous_response_id": "resp_123"}, "previous_response_id"),
    ({"model": "default", "input": [{"type": "input_image", "image_url": "http://x"}]}, "input"),
    ({"model": "default", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input"),
    ({"model": "default", "input": QUESTION, "tools": [{"type": "web_search"}]}, "tools"),
    ({"model": "default", "input": QUESTION, "tool_choice": "required"}, "tool_choice"),
    ({"model": "default", "input": QUESTION, "text": {"format": {"type": "json_schema", "name": "x"}}}, "text"),
    ({"model": "default", "input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{"}]},
     "input"),
    ({"model": "default", "input": QUESTION, "temperature": 9}, "temperature"),
]


@pytest.mark.parametrize("body, param", BAD)
def test_bad_input_is_a_clear_openai_error_and_the_server_keeps_serving(live_app, oai, model, body, param):
    r = httpx.post(live_app.url + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and len(err["message"]) > 10
    if "model" in body:  # the same through the SDK
        with pytest.raises(openai.BadRequestError) as exc:
            oai.responses.create(**body)
        assert exc.value.body["param"] == param
    assert oai.responses.create(model=model, input="Hi", max_output_tokens=2).output_text


def test_an_unknown_model_and_a_wrong_method_are_openai_errors(live_app, oai):
    with pytest.raises(openai.NotFoundError) as exc:
        oai.responses.create(model="gpt-9", input="Hi")
    assert "gpt-9" in exc.value.body["message"]
    r = httpx.get(live_app.url + "/v1/responses", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"



def test_tools_and_text_format_together(oai, model):
    """What the Agents SDK sends with an output type: tools and a format together. A forced choice
    is a call (the format is for text replies); on auto the output is held to either a call or the
    format, so both stay possible and neither is refused."""
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}}
    forced = oai.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER], text=fmt,
                                  tool_choice="required", temperature=0, max_output_tokens=64)
    assert [o.type for o in forced.output] == ["function_call"] and forced.output[0].name == "get_weather"
    for question in ("What is the weather in Paris?", "Name a city in France as JSON."):
        auto = oai.responses.create(model=model, input=question, tools=[WEATHER], text=fmt, temperature=0,
                                    max_output_tokens=64)
        assert auto.status == "completed"
        kinds = [o.type for o in auto.output]
        if kinds == ["function_call"]:
            assert "city" in json.loads(auto.output[0].arguments)
        else:
            assert kinds == ["message"] and set(json.loads(auto.output_text)) == {"name", "country"}


def test_an_assistant_message_alone_is_refused(live_app):
    r = httpx.post(live_app.url + "/v1/responses", timeout=60, json={"model": "default", "input": [
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert "no user message" in r.json()["error"]["message"]
