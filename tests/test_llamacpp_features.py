"""The llama.cpp backend's request features on the embedded SmolLM2 GGUF, through both paths (one slot:
the Llama object's context; batched: the BatchEngine): extra samplers, constraints, logprobs, raw
prompts, continue, tools and template variables, token counting, detokenize and embeddings.
Real model, short greedy or seeded generations."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from backends.base import ChatRequest, Constraint, Message, ModelSpec, SamplingParams
from backends.errors import ContextLengthExceeded, InvalidRequest, NoModelLoaded
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.template import ChatTemplate
from tests.conftest import make_manager

RAINBOW = (Message("user", "Name three colours of the rainbow."),)
APPLES = (Message("user", "Repeat the word 'apple' twenty times, separated by spaces."),)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "likes_tea": {"type": "boolean"}},
          "required": ["name", "age", "likes_tea"]}


def req(messages=RAINBOW, n: int = 24, **kw) -> ChatRequest:
    sampling = {k: kw.pop(k) for k in list(kw) if k in SamplingParams.__dataclass_fields__}
    return ChatRequest(tuple(messages), SamplingParams(max_new_tokens=n, **{"temperature": 0.0, **sampling}), **kw)


def run(backend, request):
    deltas = list(backend.stream(request, threading.Event()))
    return "".join(d.text for d in deltas), deltas


@pytest.fixture(scope="module")
def batched(cache_dir):
    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=1024, parallel=4, prefix_cache=False))
    yield b
    b.unload()


@pytest.fixture(params=["one-slot", "batched"])
def backend(request, llama_backend, batched):
    return llama_backend if request.param == "one-slot" else batched


# --- samplers --------------------------------------------------------------------------------------

def test_min_p_one_keeps_only_the_top_token_so_sampling_is_greedy(backend):
    plain = run(backend, req())[0]
    for seed in (1, 2):
        assert run(backend, req(temperature=1.0, min_p=1.0, seed=seed))[0] == plain
    assert plain.strip()


def apples(text: str) -> int:
    """How many times ``text`` says "apple" (as a word: "apple apple" and "apple, apple," alike)."""
    return len(re.findall(r"\bapple\b", text.lower()))


def test_presence_and_frequency_penalties_break_a_repetition(backend):
    plain = run(backend, req(APPLES, 30))[0]
    assert apples(plain) >= 10  # the model does repeat when nothing stops it
    penalised = run(backend, req(APPLES, 30, presence_penalty=2.0, frequency_penalty=2.0))[0]
    assert penalised != plain
    assert apples(penalised) < apples(plain)


def test_dry_penalises_a_repeated_sequence(backend):
    plain = run(backend, req(APPLES, 30))[0]
    dry = run(backend, req(APPLES, 30, dry_multiplier=1.0))[0]
    assert dry != plain
    assert apples(dry) < apples(plain)


@pytest.mark.parametrize("sampler", [{"dry_multiplier": 0.8}, {"xtc_probability": 0.5, "xtc_threshold": 0.1},
                                     {"mirostat": 1}, {"mirostat": 2, "mirostat_tau": 3.0},
                                     {"typical_p": 0.8}, {"min_p": 0.1}, {"repetition_penalty": 1.3}],
                         ids=["dry", "xtc", "mirostat1", "mirostat2", "typical", "min_p", "repetition"])
def test_each_sampler_runs_and_a_seed_repeats_it_on_both_paths(llama_backend, batched, sampler):
    r = req(temperature=1.0, seed=11, **sampler)
    first = run(llama_backend, r)[0]
    assert first.strip()
    assert run(llama_backend, r)[0] == first
    assert run(batched, r)[0] == first  # the same chain, the same logits, the same draw


def test_xtc_and_mirostat_change_the_draw(llama_backend):
    plain = run(llama_backend, req(n=32, temperature=1.0, seed=5))[0]
    for sampler in ({"xtc_probability": 1.0, "xtc_threshold": 0.05}, {"mirostat": 2}):
        assert run(llama_backend, req(n=32, temperature=1.0, seed=5, **sampler))[0] != plain


def test_an_unsupported_sampler_is_refused_naming_it(cache_dir):
    manager = make_manager(cache_dir=cache_dir)
    manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=1))
    try:
        with pytest.raises(InvalidRequest, match="no_repeat_ngram_size") as err:
            list(manager.stream(req(no_repeat_ngram_size=3), threading.Event()))
        assert err.value.param == "no_repeat_ngram_size"
        text, _ = manager.generate(req(n=8, min_p=0.05, presence_penalty=0.5))  # supported ones pass
        assert text.strip()
    finally:
        manager.unload()


# --- constraints -----------------------------------------------------------------------------------

def _is_person(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("name"), str) and isinstance(obj.get("age"), int)
            and not isinstance(obj.get("age"), bool) and isinstance(obj.get("likes_tea"), bool))


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "seed": 3}], ids=["greedy", "sampled"])
def test_a_json_schema_constraint_gives_json_that_validates(backend, sampling):
    schema = Constraint("json_schema", json.dumps(PERSON))
    for prompt in ("Describe a person as JSON.", "Who wrote Hamlet?", "Tell me about cats."):
        text, deltas = run(backend, req((Message("user", prompt),), 80, constraint=schema, **sampling))
        assert deltas[-1].finish_reason == "stop", text  # the grammar ended the reply, not the budget
        assert _is_person(json.loads(text)), text


def test_json_object_and_gbnf_grammar_constraints(backend):
    # (with flash attention "... holding your name." nests "address" objects past any budget)
    asks = (Message("user", "Reply with a JSON object with your name and age."),)
    text, deltas = run(backend, req(asks, 80, constraint=Constraint("json_object")))
    assert deltas[-1].finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)
    yes_no = Constraint("grammar", 'root ::= ("yes" | "no")')
    for prompt in ("Is the sky blue?", "Is fire cold?"):
        assert run(backend, req((Message("user", prompt),), 8, constraint=yes_no))[0] in ("yes", "no")


@pytest.mark.parametrize("constraint", [Constraint("grammar", "root ::= undefined-rule"),
                                        Constraint("json_schema", "{not json"),
                                        Constraint("json_schema", "[1, 2]")], ids=["gbnf", "not-json", "not-object"])
def test_an_invalid_constraint_is_refused_before_generating(backend, constraint):
    stream = backend.stream(req(constraint=constraint), threading.Event())
    with pytest.raises(InvalidRequest) as err:
        next(stream)
    assert err.value.param == "response_format"
    assert run(backend, req(n=4))[0].strip()  # the model still answers


# --- logprobs --------------------------------------------------------------------------------------

def test_logprobs_are_the_same_on_both_paths_and_well_formed(llama_backend, batched):
    r = req(n=16, logprobs=5)
    text1, d1 = run(llama_backend, r)
    text4, d4 = run(batched, r)
    assert text1 == text4
    lp1 = [lp for d in d1 for lp in d.logprobs]
    lp4 = [lp for d in d4 for lp in d.logprobs]
    assert len(lp1) == sum(d.tokens for d in d1) == len(lp4)
    assert all(len(d.logprobs) == d.tokens for d in d1)
    assert "".join(lp.token for lp in lp1) == text1  # one per generated token, in order
    for a, b in zip(lp1, lp4):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert len(a.top) == 5
        values = [v for _, v in a.top]
        assert values == sorted(values, reverse=True) and all(v <= 0.0 for v in values)
        assert a.top[0] == (a.token, a.logprob)  # greedy: the chosen token is the most likely one
    probs = [np.exp(v) for _, v in lp1[0].top]
    assert 0.0 < sum(probs) <= 1.0 + 1e-6


def test_logprobs_zero_gives_the_chosen_token_only_and_none_gives_nothing(backend):
    _, with_zero = run(backend, req(n=6, logprobs=0))
    chosen = [lp for d in with_zero for lp in d.logprobs]
    assert len(chosen) == 6 and all(lp.top == () and lp.logprob <= 0.0 and lp.token_bytes for lp in chosen)
    _, without = run(backend, req(n=6))
    assert all(d.logprobs == () for d in without)


def test_sampled_logprobs_report_the_drawn_token(backend):
    _, deltas = run(backend, req(n=12, temperature=1.2, seed=9, logprobs=3))
    for lp in (lp for d in deltas for lp in d.logprobs):
        assert lp.logprob <= lp.top[0][1] + 1e-9


# --- prompts: raw, continue, tools, template variables ---------------------------------------------

def test_a_raw_prompt_is_continued_without_the_chat_template(backend, llama_backend):
    prompt = "The quick brown fox"
    text, deltas = run(backend, ChatRequest((), SamplingParams(max_new_tokens=12, temperature=0.0), prompt=prompt))
    reference = llama_backend._llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=40, top_p=0.95,
                                                     min_p=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    assert text == reference
    assert deltas[-1].prompt_tokens == len(llama_backend.tokenize(prompt)) == 4  # no template around it


def test_continue_final_extends_the_assistants_message(backend):
    partial = "The capital of France is"
    messages = (Message("user", "What is the capital of France?"), Message("assistant", partial))
    prompt = backend.detokenize(backend.prompt_tokens(req(messages, continue_final=True)))
    assert prompt.endswith(partial)  # open: no end-of-turn after the partial reply
    text, _ = run(backend, req(messages, 8, continue_final=True))
    assert text.startswith(" ") and "Paris" in text  # it goes on from "is", it does not start over
    closed = backend.detokenize(backend.prompt_tokens(req(messages + (Message("user", "Thanks"),))))
    assert partial + "<|im_end|>" in closed


def test_continue_final_on_an_empty_assistant_message_opens_its_turn(llama_backend):
    messages = (Message("user", "Say hi."), Message("assistant", ""))
    cont = llama_backend.prompt_tokens(req(messages, continue_final=True))
    fresh = llama_backend.prompt_tokens(req(messages[:1]))
    assert cont == fresh  # the same open assistant turn a new reply would start from


def test_tools_and_tool_turns_are_rendered_into_the_prompt(backend):
    plain = req()
    with_tools = req(tools=(WEATHER_TOOL,))
    assert backend.count_prompt_tokens(with_tools) > backend.count_prompt_tokens(plain) + 20
    assert "get_weather" in backend.detokenize(backend.prompt_tokens(with_tools))
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    turns = (Message("user", "Weather in Oslo?"), Message("assistant", "", tool_calls=(call,)),
             Message("tool", "12 C, light rain", tool_call_id="call_1", name="get_weather"))
    prompt = backend.detokenize(backend.prompt_tokens(req(turns, tools=(WEATHER_TOOL,))))
    assert '"city": "Oslo"' in prompt and "12 C, light rain" in prompt
    text, _ = run(backend, req(turns, 16, tools=(WEATHER_TOOL,)))
    assert text.strip()


def test_count_prompt_tokens_is_the_streamed_prompt_size(backend):
    r = req(n=2)
    _, deltas = run(backend, r)
    assert backend.count_prompt_tokens(r) == deltas[-1].prompt_tokens == len(backend.prompt_tokens(r))
    longer = req((Message("user", "Name three colours of the rainbow, and explain each one in detail."),), 2)
    assert backend.count_prompt_tokens(longer) > backend.count_prompt_tokens(r)


def test_a_template_gets_tools_and_template_variables_natively():
    source = ("{% if enable_thinking %}<think>{% endif %}{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
              "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
              "{% for c in m.tool_calls or [] %}{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}"
              "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}</{{ m.role }}>{% endfor %}"
              "{% if add_generation_prompt %}<assistant>{% endif %}")
    t = ChatTemplate(source, bos_token="", eos_token="</s>")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    r = ChatRequest((Message("user", "hi"), Message("assistant", "", tool_calls=(call,)),
                     Message("tool", "42", tool_call_id="c1")),
                    tools=(WEATHER_TOOL,), template_kwargs=(("enable_thinking", True),))
    assert t.render(r) == '<think>[get_weather]<user>hi</user><assistant>f{"x": 1}</assistant><tool>42#c1</tool><assistant>'
    off = ChatRequest(r.messages, template_kwargs=(("enable_thinking", False),))
    assert t.render(off).startswith("<user>hi")
    with pytest.raises(InvalidRequest) as err:
        t.render(ChatRequest(r.messages, template_kwargs=(("messages", []),)))
    assert err.value.param == "chat_template_kwargs"


def test_a_template_that_raises_is_a_clear_error():
    t = ChatTemplate("{% if messages[0].role == 'system' %}{{ raise_exception('No system role') }}{% endif %}ok",
                     bos_token="", eos_token="")
    with pytest.raises(InvalidRequest, match="No system role"):
        t.render(ChatRequest((Message("system", "be nice"), Message("user", "hi"))))


# --- tokens and embeddings -------------------------------------------------------------------------

def test_detokenize_round_trips_and_refuses_unknown_ids(llama_backend):
    text = "Hello, wörld! 日本"
    assert llama_backend.detokenize(llama_backend.tokenize(text)) == text
    assert llama_backend.detokenize(llama_backend.prompt_tokens(req())).startswith("<|im_start|>system")
    for bad in ([-1], [10**9], ["7"]):
        with pytest.raises(InvalidRequest):
            llama_backend.detokenize(bad)


def test_embeddings_are_normalised_repeatable_and_meaningful(backend):
    texts = ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly tax filings are due in April.",
             "The cat sat on the mat."]
    v = np.array(backend.embed(texts))
    assert v.shape[0] == 4 and v.shape[1] > 100
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert np.allclose(v[0], v[3])  # the same text, the same vector
    assert v[0] @ v[1] > v[0] @ v[2]  # a paraphrase is closer than an unrelated sentence
    with pytest.raises(InvalidRequest):
        backend.embed([""])
    with pytest.raises(ContextLengthExceeded, match="512 tokens"):
        backend.embed(["word " * 600])
    assert np.allclose(backend.embed([texts[0]])[0], v[0])  # still working after the refusals


def test_embeddings_from_several_threads_while_chat_streams(backend):
    expected = backend.embed(["hello there"])[0]
    results: list = [None] * 4

    def work(i):
        results[i] = backend.embed(["hello there"])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    chat = backend.stream(req(n=16), threading.Event())
    next(chat)
    for t in threads:
        t.start()
    text = "".join(d.text for d in chat)
    for t in threads:
        t.join(timeout=60)
    assert all(np.allclose(r, expected) for r in results)
    assert text == run(backend, req(n=16))[0]  # chat was not disturbed


def test_unload_frees_the_embedding_context(cache_dir):
    b = LlamaCppBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=256, parallel=1))
    assert len(b.embed(["x"])[0]) > 0
    b.unload()
    assert b._embedder is None
    with pytest.raises(NoModelLoaded):
        b.embed(["x"])
