"""The real `ollama` client against the app's Ollama API (/api on the same port as the UI): chat
(streamed and not, tools), generate, list, ps, show, version, embed and the older embeddings; the
same greedy text as /v1/chat/completions; every refusal in Ollama's error shape (``{"error": ...}``),
unknown paths under /api included, with the server still serving."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

MSG = [{"role": "user", "content": "Name three colours of the rainbow."}]
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}  # Ollama's default repeat_penalty is 1.1
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def lama(live_app):
    return ollama.Client(host=live_app.url, timeout=120)


@pytest.fixture(scope="module")
def model(lama) -> str:
    return lama.list().models[0].model


def test_list_ps_show_and_version_describe_the_loaded_model(lama, live_app):
    cur = live_app.manager.current
    models = lama.list().models
    assert [m.model for m in models] == [f"{cur.name}:latest"]
    assert models[0].details.quantization_level == cur.quantization and models[0].size == cur.footprint_bytes
    running = lama.ps().models
    assert [(m.model, m.context_length) for m in running] == [(f"{cur.name}:latest", cur.context_length)]
    shown = lama.show(f"{cur.name}:latest")
    assert shown.details.quantization_level == cur.quantization and "completion" in shown.capabilities
    assert lama.show(cur.name).modelinfo["general.context_length"] == cur.context_length  # without the tag too
    assert httpx.get(live_app.url + "/api/version", timeout=30).json()["version"]


def test_chat_greedy_equals_chat_completions_streamed_and_not(lama, model, live_app):
    whole = lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 32})
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    text = whole.message.content
    assert text.strip() and 0 < whole.eval_count <= 32 and whole.prompt_eval_count > 5
    recorded = live_app.manager.metrics.recent(1)[0]  # the shared ChatService's record, under its own label
    assert (recorded.endpoint, recorded.completion_tokens) == ("api/chat", whole.eval_count)
    oai = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    chat = oai.chat.completions.create(model=live_app.manager.current.name, messages=MSG, max_tokens=32,
                                       temperature=0)
    assert text == chat.choices[0].message.content and whole.eval_count == chat.usage.completion_tokens
    parts = list(lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 32}, stream=True))
    assert sum(1 for p in parts if p.message.content) >= 2, "not streamed"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == text
    assert (parts[-1].done_reason, parts[-1].eval_count) == (whole.done_reason, whole.eval_count)


def test_options_reach_the_samplers(lama, model):
    short = lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 3})
    assert (short.done_reason, short.eval_count) == ("length", 3)
    base = lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 40}).message.content
    stop = base.split()[2]
    cut = lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 40, "stop": [stop]})
    assert stop not in cut.message.content and base.startswith(cut.message.content)
    seeded = [lama.chat(model=model, messages=MSG, options={"temperature": 1.5, "seed": 7, "num_predict": 24,
                                                               "top_k": 0, "top_p": 1.0, "min_p": 0.0})
              .message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_generate_applies_the_template_or_continues_raw(lama, model):
    said = lama.generate(model=model, prompt=MSG[0]["content"], options={**GREEDY, "num_predict": 32})
    chat = lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 32})
    assert said.done and said.response == chat.message.content
    parts = list(lama.generate(model=model, prompt=MSG[0]["content"], options={**GREEDY, "num_predict": 32},
                               stream=True))
    assert "".join(p.response for p in parts) == said.response and parts[-1].done
    raw = lama.generate(model=model, prompt="The capital of France is", raw=True, options={**GREEDY, "num_predict": 8})
    assert raw.response.strip() and raw.eval_count <= 8


def test_a_request_without_messages_or_prompt_only_loads(lama, model):
    """What Ollama's clients send to load a model before use: answered done at once, nothing generated."""
    loaded = lama.generate(model=model)
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    loaded = lama.chat(model=model, messages=[])
    assert (loaded.done, loaded.done_reason, loaded.message.content) == (True, "load", "")


def test_format_json_and_a_schema_constrain_the_reply(lama, model, live_app):
    obj = lama.chat(model=model, messages=MSG, format="json", options={**GREEDY, "num_predict": 24})
    oai = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    same = oai.chat.completions.create(model=live_app.manager.current.name, messages=MSG, max_tokens=24,
                                       temperature=0, response_format={"type": "json_object"})
    free = lama.chat(model=model, messages=MSG, options={**GREEDY, "num_predict": 24})
    assert obj.message.content == same.choices[0].message.content != free.message.content
    assert obj.message.content.lstrip().startswith("{")
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"],
              "additionalProperties": False}
    typed = lama.generate(model=model, prompt=MSG[0]["content"], format=schema, options={**GREEDY, "num_predict": 48})
    assert json.loads(typed.response)["colour"] in ("red", "green", "blue")


def test_a_tool_result_turn_is_rendered(lama, model):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    turn = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 24 degrees."}]
    first = lama.chat(model=model, messages=turn[:1], tools=[WEATHER], options={**GREEDY, "num_predict": 48})
    answer = lama.chat(model=model, messages=turn, tools=[WEATHER], options={**GREEDY, "num_predict": 48})
    assert answer.done and answer.prompt_eval_count > first.prompt_eval_count
    for c in first.message.tool_calls or ():  # a call the model made comes back with decoded arguments
        assert c.function.name == "get_weather" and isinstance(c.function.arguments, dict)


def test_embed_and_embeddings(lama, model, live_app):
    out = lama.embed(model=model, input=["red", "a longer sentence about colours"])
    assert live_app.manager.metrics.recent(1)[0].endpoint == "api/embed"
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == len(out.embeddings[1]) > 8
    assert out.prompt_eval_count > 2
    one = lama.embeddings(model=model, prompt="red")
    assert one.embedding == pytest.approx(out.embeddings[0], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("method, path, body, status, words", [
    ("POST", "/api/chat", {"messages": MSG}, 400, "model: Field required"),
    ("POST", "/api/chat", {"model": "llama3:latest", "messages": MSG}, 404, "'llama3' does not exist"),
    ("POST", "/api/chat", {"model": "{model}", "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ("POST", "/api/chat", {"model": "nope", "messages": []}, 404, "'nope' does not exist"),
    ("POST", "/api/chat", {"model": "{model}", "messages": MSG, "options": {"temperature": -1}}, 400, "temperature"),
    ("POST", "/api/chat", {"model": "{model}", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
     400, "not an image"),
    ("POST", "/api/generate", {"model": "{model}", "prompt": "   "}, 400, "empty"),
    ("POST", "/api/generate", {"model": "{model}", "prompt": "x", "format": "yaml"}, 400, "format"),
    ("POST", "/api/embed", {"model": "{model}", "input": []}, 400, "input"),
    ("POST", "/api/embeddings", {"model": "{model}"}, 400, "prompt: Field required"),
    ("POST", "/api/show", {}, 400, "name the model"),
    ("GET", "/api/chat", None, 405, "use POST"),
    ("POST", "/api/pull", {"model": "llama3"}, 501, "does not pull"),
    ("GET", "/api/nothing/here", None, 404, "Unknown endpoint /api/nothing/here"),
])
def test_bad_input_is_an_ollama_error_and_the_server_keeps_serving(lama, model, live_app, method, path, body,
                                                                   status, words):
    if body is not None:
        body = json.loads(json.dumps(body).replace("{model}", model))
    r = httpx.request(method, live_app.url + path, json=body, timeout=60)
    assert r.status_code == status
    err = r.json()
    assert list(err) == ["error"] and words in err["error"]
    assert lama.chat(model=model, messages=MSG, options={"num_predict": 2}).eval_count > 0


def test_the_client_raises_response_errors(lama, model, live_app):
    with pytest.raises(ollama.ResponseError) as exc:
        lama.chat(model="nope", messages=MSG)
    assert exc.value.status_code == 404 and "'nope' does not exist" in exc.value.error
    with pytest.raises(ollama.ResponseError) as exc:
        list(lama.chat(model="nope", messages=MSG, stream=True))
    assert exc.value.status_code == 404
    r = httpx.post(live_app.url + "/api/chat", content=b"{nope", timeout=60,
                   headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (400, {"error": "The request body is not valid JSON."})


def test_the_api_key_guards_api_in_ollamas_shape(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, api_key="sekrit", max_body_bytes=4096)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        name = srv.manager.current.name
        good = ollama.Client(host=srv.url, headers={"Authorization": "Bearer sekrit"}, timeout=120)
        assert good.chat(model=name, messages=MSG, options={"num_predict": 2}).eval_count > 0
        for path in ("/api/tags", "/api/version", "/api/nothing"):
            r = httpx.get(srv.url + path, timeout=60)
            assert (r.status_code, list(r.json())) == (401, ["error"]), path
        with pytest.raises(ollama.ResponseError) as exc:
            ollama.Client(host=srv.url, timeout=120).list()
        assert exc.value.status_code == 401 and "API key" in exc.value.error
        with pytest.raises(ollama.ResponseError) as exc:
            good.chat(model=name, messages=[{"role": "user", "content": "x" * 5000}])
        assert exc.value.status_code == 413 and "larger than this server accepts" in exc.value.error
