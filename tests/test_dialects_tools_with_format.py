"""Tools and a response format together on the Anthropic and Ollama dialects, as on /v1 (issue: the
OpenAI Agents SDK-style request that forces a call first and wants a schema for the final answer):
a forced tool choice gives the call, the format applies to text replies; on auto (Ollama has no
tool_choice) the grammar allows a call or the format, so the call the model picks for a weather
question (greedy, on the embedded model) is still made, never a 400."""

from __future__ import annotations

import anthropic
import ollama
import pytest

pytestmark = pytest.mark.slow

WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ANSWER = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def model(live_app) -> str:
    return live_app.manager.current.name


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_anthropic_forced_tool_with_an_output_format_gives_the_call(live_app, model, choice):
    claude = anthropic.Anthropic(base_url=live_app.url, api_key="unused", max_retries=0, timeout=120)
    msg = claude.messages.create(model=model, max_tokens=48, messages=MSG, tools=[WEATHER], tool_choice=choice,
                                 extra_body={"temperature": 0,
                                             "output_config": {"format": {"type": "json_schema", "schema": ANSWER}}})
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and calls and calls[0].name == "get_weather"
    assert isinstance(calls[0].input.get("city"), str)


def test_anthropic_auto_tools_with_an_output_format_answer_a_call_or_the_format(live_app, model):
    claude = anthropic.Anthropic(base_url=live_app.url, api_key="unused", max_retries=0, timeout=120)
    msg = claude.messages.create(model=model, max_tokens=64, messages=MSG, tools=[WEATHER],
                                 extra_body={"temperature": 0,
                                             "output_config": {"format": {"type": "json_schema", "schema": ANSWER}}})
    calls = [b for b in msg.content if b.type == "tool_use"]  # a call stays possible beside the format
    assert [c.name for c in calls] == ["get_weather"] and msg.stop_reason == "tool_use"  # (greedy picks it here)


def test_ollama_tools_with_a_format_answer_a_call_or_the_format(live_app, model):
    lama = ollama.Client(host=live_app.url, timeout=120)
    tool = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                             "parameters": WEATHER["input_schema"]}}
    reply = lama.chat(model=model, messages=MSG, tools=[tool], format=ANSWER,
                      options={"temperature": 0, "num_predict": 64})
    calls = reply.message.tool_calls or []  # a call stays possible beside the format (greedy picks it here)
    assert [c.function.name for c in calls] == ["get_weather"] and calls[0].function.arguments.get("city")
