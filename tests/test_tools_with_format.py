"""Tools together with a response format on /v1/chat/completions, as the OpenAI Agents SDK sends them
(a forced call first, the schema for the final answer): a forced choice is a call, the format is for
text replies; on ``auto`` the output is held to either a call or the format, so tools stay possible.

Real model and real clients for what a user sees; a scripted engine where the model must write
something exact (two calls at once, which the embedded model does not do unprompted) to show that
``parallel_tool_calls: false`` returns one of them, on chat completions and on Responses."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.api.pipeline import Pipeline
from serving.chat_service import ChatService
from serving.openai.completions import ChatCompletions
from serving.openai.response_store import ResponseStore
from serving.openai.responses import Responses
from tests.fakes import scripted_manager

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}
CITY = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "country": {"type": "string",
                                                                                           "maxLength": 20}},
    "required": ["name", "country"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def oai(live_oai):
    return live_oai


def test_a_forced_call_with_a_response_format_is_a_call(oai):
    r = oai.chat.completions.create(model="default", messages=ASK, tools=[WEATHER], tool_choice="required",
                                    response_format=CITY, temperature=0, max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "get_weather"
    assert isinstance(json.loads(choice.message.tool_calls[0].function.arguments)["city"], str)


@pytest.mark.parametrize("question", ["What is the weather in Paris?", "Name a city in France as JSON."])
def test_auto_with_a_response_format_is_a_call_or_the_format(oai, question):
    r = oai.chat.completions.create(model="default", messages=[{"role": "user", "content": question}],
                                    tools=[WEATHER], response_format=CITY, temperature=0, max_tokens=64)
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert isinstance(json.loads(choice.message.tool_calls[0].function.arguments)["city"], str)
    else:
        assert choice.finish_reason == "stop" and set(json.loads(choice.message.content)) == {"name", "country"}


def test_the_agents_sdk_chat_completions_model_with_a_tool_and_an_output_type(live_app):
    """The Agents SDK's chat-completions model sends tools, tool_choice and the output type's schema
    in one request; the server answers with the call instead of refusing the combination."""
    agents = pytest.importorskip("agents")
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        summary: str

    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"It is sunny in {city}."

    client = openai.AsyncOpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    agents.set_tracing_disabled(True)
    agent = agents.Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                         output_type=Weather, tool_use_behavior="stop_on_first_tool",
                         model=agents.OpenAIChatCompletionsModel(model="default", openai_client=client),
                         model_settings=agents.ModelSettings(temperature=0, max_tokens=64, tool_choice="required"))
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=2)
    assert len(seen) == 1 and result.final_output == f"It is sunny in {seen[0]}."


# --- parallel_tool_calls: false, where the (scripted) model writes two calls ---------------------------

TWO_CALLS = ['[{"name": "get_weather", "arguments": {"city": "Paris"}}, ',
             '{"name": "get_weather", "arguments": {"city": "Tokyo"}}]']


@pytest.fixture
def scripted():
    manager, script = scripted_manager(features=frozenset({"tools", "constraint"}), slots=1)
    pipe = Pipeline(manager, ChatService(manager))
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await pipe.generate(ChatCompletions(), request)

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await pipe.generate(Responses(ResponseStore()), request)

    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=TestClient(app),
                           max_retries=0)
    client.script = script
    yield client
    manager.close()


def chat_calls(oai, stream: bool, **kwargs) -> list[tuple[str, dict]]:
    kwargs = dict(model="scripted", messages=ASK, tools=[WEATHER], **kwargs)
    if not stream:
        return [(t.function.name, json.loads(t.function.arguments))
                for t in oai.chat.completions.create(**kwargs).choices[0].message.tool_calls]
    calls: dict[int, list[str]] = {}
    for chunk in oai.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or ():
                slot = calls.setdefault(tc.index, ["", ""])
                slot[0] += tc.function.name or ""
                slot[1] += tc.function.arguments or ""
    return [(n, json.loads(a)) for n, a in (calls[i] for i in sorted(calls))]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_parallel_tool_calls_false_returns_one_call_where_the_model_wrote_two(scripted, stream):
    scripted.script.enqueue(TWO_CALLS, TWO_CALLS)
    assert chat_calls(scripted, stream) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert chat_calls(scripted, stream, parallel_tool_calls=False) == [("get_weather", {"city": "Paris"})]
    scripted.script.enqueue(TWO_CALLS, TWO_CALLS)
    flat = {"type": "function", **WEATHER["function"]}
    both = scripted.responses.create(model="scripted", input="Weather?", tools=[flat])
    assert [json.loads(o.arguments)["city"] for o in both.output] == ["Paris", "Tokyo"]
    one = scripted.responses.create(model="scripted", input="Weather?", tools=[flat], parallel_tool_calls=False)
    assert [json.loads(o.arguments)["city"] for o in one.output] == ["Paris"]
