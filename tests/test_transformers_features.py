"""The transformers backend's request features on the real model (a checkpoint derived from the embedded
GGUF, CPU): the extra samplers, constrained JSON / grammar output, logprobs, raw prompts, continue,
tools and template variables, token counting and detokenizing."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

from backends.base import ChatRequest, Constraint, Message, ModelSpec, SamplingParams
from backends.errors import InvalidRequest
from backends.hf.backend import TransformersBackend
from tests.conftest import PROMPT, greedy, make_manager

torch = pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")

REPETITIVE = (Message("user", "Repeat the word hello ten times."),)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "colour"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "colour": {"enum": ["red", "green", "blue"]}}}


@pytest.fixture(scope="module")
def hf(cache_dir):
    b = TransformersBackend(cache_dir)
    b.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", parallel=1))
    yield b
    b.unload()


def run(backend, request):
    deltas = list(backend.stream(request, threading.Event()))
    return "".join(d.text for d in deltas), deltas


def ask(messages=PROMPT, n: int = 24, logprobs: int | None = None, constraint=None, **sampling) -> ChatRequest:
    sampling.setdefault("temperature", 0.0)
    return ChatRequest(tuple(messages), SamplingParams(max_new_tokens=n, **sampling), logprobs=logprobs,
                       constraint=constraint)


def tokens(deltas) -> list[bytes]:
    """The generated tokens, exactly (each delta's logprob carries its token's bytes)."""
    return [lp.token_bytes for d in deltas for lp in d.logprobs]


def greedy_ids(backend, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = backend._model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                      max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


# --- samplers ------------------------------------------------------------------------------------------

def test_min_p_one_keeps_only_the_top_token_so_sampling_is_greedy(hf):
    plain = run(hf, greedy(24))[0]
    for seed in (1, 2):
        sampled = run(hf, ask(n=24, temperature=1.5, top_k=0, top_p=1.0, min_p=1.0, seed=seed))[0]
        assert sampled == plain
    assert run(hf, ask(n=24, temperature=1.5, top_k=0, top_p=1.0, seed=1))[0] != plain  # it really sampled


def test_presence_and_frequency_penalties_break_a_repetitive_reply(hf):
    plain = tokens(run(hf, ask(REPETITIVE, 30, logprobs=0))[1])
    assert max(Counter(plain).values()) >= 5  # "hello, hello, hello, ..."
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        text, deltas = run(hf, ask(REPETITIVE, 30, logprobs=0, **penalty))
        penalised = tokens(deltas)
        assert max(Counter(penalised).values()) < max(Counter(plain).values())
        assert text.strip()


def test_no_repeat_ngram_size_two_repeats_no_bigram(hf):
    plain = tokens(run(hf, ask(REPETITIVE, 30, logprobs=0))[1])
    assert max(Counter(zip(plain, plain[1:])).values()) > 1
    text, deltas = run(hf, ask(REPETITIVE, 30, logprobs=0, no_repeat_ngram_size=2))
    got = tokens(deltas)
    assert len(got) > 10 and text.strip()
    assert max(Counter(zip(got, got[1:])).values()) == 1


def test_samplers_it_lacks_are_refused_by_name_through_the_manager(cache_dir):
    manager = make_manager(cache_dir=cache_dir)
    manager.load(ModelSpec(source="embedded", backend="transformers", quantization="fp32", n_ctx=512, parallel=2))
    try:
        for field, value in (("dry_multiplier", 0.8), ("xtc_probability", 0.5), ("mirostat", 2)):
            with pytest.raises(InvalidRequest, match=field) as caught:
                manager.stream(ask(n=4, **{field: value}), threading.Event())
            assert caught.value.param == field
        # What it has goes through the manager, and a batching model runs it (on generate()).
        text, _ = manager.generate(ask(n=12, temperature=0.9, min_p=0.2, typical_p=0.9, presence_penalty=0.5,
                                       seed=3))
        assert text.strip()
        deltas = list(manager.stream(ask(n=40, logprobs=2, constraint=Constraint("json_schema", json.dumps(PERSON))),
                                     threading.Event()))
        reply = "".join(d.text for d in deltas)
        jsonschema.validate(json.loads(reply), PERSON)
        assert all(len(d.logprobs) == d.tokens for d in deltas) and sum(d.tokens for d in deltas) > 3
    finally:
        manager.unload()


# --- constraints ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["Describe a person as JSON.", "Who wrote Hamlet?", "Tell me about your cat.",
                                    "What is 2+2?"])
def test_json_schema_output_parses_and_validates(hf, prompt):
    text, deltas = run(hf, ask([Message("user", prompt)], 48, constraint=Constraint("json_schema", json.dumps(PERSON))))
    jsonschema.validate(json.loads(text), PERSON)
    assert deltas[-1].finish_reason == "stop"


def test_json_object_and_sampled_json_parse(hf):
    text = run(hf, ask([Message("user", "List two fruits.")], 64, constraint=Constraint("json_object")))[0]
    assert isinstance(json.loads(text), dict)
    for seed in (1, 2):
        sampled = run(hf, ask([Message("user", "Describe a person.")], 48, temperature=1.0, seed=seed,
                              constraint=Constraint("json_schema", json.dumps(PERSON))))[0]
        jsonschema.validate(json.loads(sampled), PERSON)


def test_gbnf_grammar_limits_the_reply(hf):
    grammar = 'root ::= ("yes" | "no") "."'
    for prompt in ("Is the sky blue?", "Can fish fly?"):
        text = run(hf, ask([Message("user", prompt)], 8, constraint=Constraint("grammar", grammar)))[0]
        assert text in ("yes.", "no.")


@pytest.mark.parametrize("constraint", [Constraint("json_schema", "{not json"), Constraint("json_schema", "[1, 2]"),
                                        Constraint("json_schema", '{"type": "objekt"}'),
                                        Constraint("grammar", "root ::= undefined-rule")])
def test_a_bad_schema_or_grammar_is_refused_before_any_output(hf, constraint):
    stream = hf.stream(ask(n=8, constraint=constraint), threading.Event())
    with pytest.raises(InvalidRequest) as caught:
        next(stream)
    assert caught.value.param == "response_format"
    assert run(hf, greedy(4))[0]  # the model still answers


# --- logprobs ------------------------------------------------------------------------------------------

def test_greedy_logprobs_match_a_forward_pass(hf):
    request = ask(n=16, logprobs=5)
    text, deltas = run(hf, request)
    ids = hf.prompt_ids(request)
    generated = greedy_ids(hf, ids, 16)
    eos = hf._tok.eos_token_id
    if eos in generated:
        generated = generated[:generated.index(eos)]
    with torch.inference_mode():
        logits = hf._model(torch.tensor([ids + generated])).logits[0].float()
    expected = torch.log_softmax(logits[len(ids) - 1:-1], dim=-1)
    got = [lp for d in deltas for lp in d.logprobs]
    assert len(got) == len(generated) == sum(d.tokens for d in deltas)
    assert b"".join(lp.token_bytes for lp in got).decode() == text
    for i, (lp, token) in enumerate(zip(got, generated)):
        assert lp.logprob == pytest.approx(float(expected[i, token]), abs=1e-3)
        top_ids = torch.topk(expected[i], 5).indices.tolist()
        assert [t for t, _ in lp.top] == [hf._tok.decode([t]) for t in top_ids]
        assert lp.top[0][1] == pytest.approx(lp.logprob, abs=1e-5)  # greedy: the chosen token is the top one
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)


def test_logprobs_zero_gives_the_chosen_token_only_and_texts_are_unchanged(hf):
    plain, _ = run(hf, greedy(12))
    text, deltas = run(hf, ask(n=12, logprobs=0))
    assert text == plain
    assert all(lp.top == () and lp.logprob <= 0.0 for d in deltas for lp in d.logprobs)
    assert not any(d.logprobs for d in run(hf, greedy(4))[1])


# --- prompts -------------------------------------------------------------------------------------------

def test_raw_prompt_is_continued_without_a_template(hf):
    prompt = "The capital of France is"
    request = ChatRequest((), SamplingParams(max_new_tokens=12, temperature=0.0), prompt=prompt)
    ids = hf._tok(prompt)["input_ids"]
    assert hf.prompt_ids(request) == ids and hf.count_prompt_tokens(request) == len(ids)
    text, deltas = run(hf, request)
    assert text == hf._tok.decode(greedy_ids(hf, ids, 12), skip_special_tokens=True)
    assert deltas[-1].prompt_tokens == len(ids)
    assert "Paris" in text


def test_continue_final_extends_the_assistant_message(hf):
    start = "The three colours are"
    messages = PROMPT + (Message("assistant", start),)
    request = ChatRequest(messages, SamplingParams(max_new_tokens=12, temperature=0.0), continue_final=True)
    rendered = hf.detokenize(hf.prompt_ids(request))
    assert rendered.endswith(start)  # open: no end-of-turn, no new assistant turn
    closed = hf.detokenize(hf.prompt_ids(ChatRequest(messages + (Message("user", "And?"),))))
    assert start + "<|im_end|>" in closed
    text = run(hf, request)[0]
    assert text == hf._tok.decode(greedy_ids(hf, hf.prompt_ids(request), 12), skip_special_tokens=True)
    assert text.strip()


def test_tools_make_the_prompt_longer_and_reach_the_model(hf):
    plain = ChatRequest(PROMPT)
    with_tools = ChatRequest(PROMPT, tools=(WEATHER,))
    assert hf.count_prompt_tokens(with_tools) > hf.count_prompt_tokens(plain) + 20
    rendered = hf.detokenize(hf.prompt_ids(with_tools))
    assert "get_weather" in rendered and "The current weather in a city." in rendered
    # A call the assistant made and the tool's answer are in the next prompt.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    turn = PROMPT + (Message("assistant", "", tool_calls=(call,)),
                     Message("tool", "Sunny, 21 C", tool_call_id="call_1", name="get_weather"))
    rendered = hf.detokenize(hf.prompt_ids(ChatRequest(turn, tools=(WEATHER,))))
    assert '"city": "Oslo"' in rendered and "Sunny, 21 C" in rendered
    assert run(hf, ChatRequest(turn, SamplingParams(max_new_tokens=8, temperature=0.0), tools=(WEATHER,)))[0].strip()
    with pytest.raises(InvalidRequest) as caught:
        hf.count_prompt_tokens(ChatRequest(PROMPT, tools=({"type": "function"},)))
    assert caught.value.param == "tools"


def test_a_template_that_knows_tools_and_variables_gets_them(hf):
    """A Qwen-style template (tools, tool calls with mapping arguments, enable_thinking) on this model's
    own tokenizer."""
    from transformers import AutoTokenizer

    from backends.hf.chat import prompt_ids

    tok = AutoTokenizer.from_pretrained(hf._model.name_or_path)
    tok.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
        "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}"
        "{% if m.tool_call_id %} for {{ m.tool_call_id }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% if enable_thinking is defined and not enable_thinking %}"
        "<think></think>{% endif %}{% endif %}")
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = PROMPT + (Message("assistant", "", tool_calls=(call,)), Message("tool", "Sunny", tool_call_id="c1"))
    text = tok.decode(prompt_ids(tok, ChatRequest(messages, tools=(WEATHER,))))
    assert text.startswith("TOOLS:get_weather;") and "CALL get_weather(Oslo)" in text and "[tool]Sunny for c1" in text
    thinking_off = tok.decode(prompt_ids(tok, ChatRequest(PROMPT, template_kwargs=(("enable_thinking", False),))))
    assert thinking_off.endswith("[assistant]<think></think>")
    assert tok.decode(prompt_ids(tok, ChatRequest(PROMPT))).endswith("[assistant]")
    with pytest.raises(InvalidRequest) as caught:
        prompt_ids(tok, ChatRequest(PROMPT, template_kwargs=(("tokenize", False),)))
    assert caught.value.param == "template_kwargs"


# --- tokens --------------------------------------------------------------------------------------------

def test_detokenize_inverts_tokenize_and_refuses_unknown_ids(hf):
    text = "Hello world, ünïcödé and 漢字!"
    assert hf.detokenize(hf.tokenize(text)) == text
    assert hf.detokenize([]) == ""
    for bad in ([10**9], [-1]):
        with pytest.raises(InvalidRequest, match="outside this model's vocabulary"):
            hf.detokenize(bad)


def test_count_prompt_tokens_is_what_a_stream_reports(hf):
    request = greedy(2)
    assert hf.count_prompt_tokens(request) == run(hf, request)[1][-1].prompt_tokens == len(hf.prompt_ids(request))


# --- continuous batching's sampling (issue 16) ---------------------------------------------------------

def _cb_processors():
    from transformers import TopKLogitsWarper, TopPLogitsWarper
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingTopKLogitsWarper, ContinuousBatchingTopPLogitsWarper)

    from backends.hf.batch_sampling import TopK, TopPAndDraw, _rebuild

    top_k = ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(top_k=40))
    top_p = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.9))
    return top_k, _rebuild(TopK, top_k), top_p, _rebuild(TopPAndDraw, top_p)


def test_batch_top_k_keeps_what_transformers_keeps():
    theirs, ours, _, _ = _cb_processors()
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 1000, generator=gen)
    k = torch.tensor([1, 5, 1000, 40], dtype=torch.int32)
    assert torch.equal(ours(scores, k), theirs(scores, k))
    assert torch.isfinite(ours(scores, k)).sum(-1).tolist() == [1, 5, 1000, 40]
    everything = torch.tensor([1000] * 4, dtype=torch.int32)
    assert torch.equal(ours(scores, everything), scores)


@pytest.mark.parametrize("top_p, masked", [(0.5, True), (0.9, True), (1.0, True), (0.9, False), (1.0, False)])
def test_batch_draw_follows_the_top_p_distribution(top_p, masked):
    """``masked``: one token already -inf (the candidates path); else every token is a candidate (with
    top_p 1, the draw over the whole vocabulary without a sort)."""
    _, _, theirs, ours = _cb_processors()
    torch.manual_seed(0)
    row = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, float("-inf") if masked else -2.0, -3.0])
    draws = 40000
    scores = row.expand(draws, -1).clone()
    arg = torch.full((draws,), top_p, dtype=torch.float32).view(torch.int32)
    out = ours(scores, arg)
    assert (torch.isfinite(out).sum(-1) == 1).all()  # one token left: the manager's argmax takes it
    counts = torch.bincount(out.argmax(-1), minlength=row.numel()).float() / draws
    expected = theirs(row.unsqueeze(0), arg[:1]).softmax(-1)[0]  # transformers' nucleus, renormalised
    assert counts[expected == 0].sum() == 0  # nothing outside the nucleus, never a -inf token
    assert torch.allclose(counts, expected, atol=0.01)


def test_batch_greedy_rows_take_the_top_token():
    _, top_k, _, draw = _cb_processors()
    scores = torch.randn(6, 1000, generator=torch.Generator().manual_seed(1))
    one = torch.ones(6, dtype=torch.int32)
    out = draw(top_k(scores, one), torch.ones(6, dtype=torch.float32).view(torch.int32))
    assert torch.equal(out.argmax(-1), scores.argmax(-1)) and (torch.isfinite(out).sum(-1) == 1).all()
