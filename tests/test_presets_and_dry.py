"""The built-in presets and DRY's settings reach the engine: each preset's values, sent as the UI
sends them (the /complete parameters by name), show in the request log's record of what the engine
was given (/stats' last request); DRY's base, allowed length, range and sequence breakers reach
llama.cpp's DRY sampler; /v1 takes the breakers as llama-server does (a list) and refuses bad ones
by name. Real model (the embedded GGUF), real gradio_client and openai client."""

from __future__ import annotations

import json

import openai
import pytest

from backends.base import ChatRequest, SamplingParams
from backends.options import BY_NAME, DRY_DEFAULT_BREAKERS
from ui.presets import BUILTIN_PRESETS

NEW_PRESETS = [name for name in BUILTIN_PRESETS if name not in ("Deterministic", "Balanced", "Creative")]


def test_there_are_text_generation_webuis_presets_beside_the_apps_own():
    assert len(NEW_PRESETS) >= 10
    assert BUILTIN_PRESETS["LLaMA-Precise"]["top_p"] == 0.1 and BUILTIN_PRESETS["Yara"]["top_k"] == 72


def test_each_presets_values_reach_the_engine(client):
    for name in NEW_PRESETS:
        client.predict("The lighthouse keeper", max_new_tokens=1, **BUILTIN_PRESETS[name], api_name="/complete")
    recent = client.predict(len(NEW_PRESETS), api_name="/stats")["recent"]  # in the order they ran
    assert [r["endpoint"] for r in recent] == ["complete"] * len(NEW_PRESETS)
    for name, record in zip(NEW_PRESETS, recent, strict=True):
        given = record["sampling"]
        for field, value in BUILTIN_PRESETS[name].items():
            engine = given.get(field, BY_NAME[field].default)
            assert engine == value, f"preset {name!r}: {field} reached the engine as {engine!r}, not {value!r}"


class Spy:
    """llama_cpp's module as ``build_sampler`` uses it, recording the DRY sampler's arguments."""

    def __init__(self, real):
        self._real = real
        self.dry = None

    def __getattr__(self, name):
        return getattr(self._real, name)

    def llama_sampler_init_dry(self, vocab, multiplier, base, allowed_length, last_n, breakers, n):
        self.dry = (multiplier, base, allowed_length, last_n, [breakers[i].decode() for i in range(n)])
        return self._real.llama_sampler_init_dry(vocab, multiplier, base, allowed_length, last_n, breakers, n)


@pytest.mark.parametrize("settings,expected", [
    ({}, (0.8, 1.75, 2, 2048, list(DRY_DEFAULT_BREAKERS))),
    ({"dry_base": 2.5, "dry_allowed_length": 4, "dry_penalty_last_n": 128,
      "dry_sequence_breakers": '"\\n", "###"'}, (0.8, 2.5, 4, 128, ["\n", "###"])),
    ({"dry_sequence_breakers": ["."]}, (0.8, 1.75, 2, 2048, ["."])),
    ({"dry_sequence_breakers": "[]"}, (0.8, 1.75, 2, 2048, [])),
])
def test_dry_settings_reach_llama_cpps_dry_sampler(llama_backend, settings, expected):
    import llama_cpp

    from backends.base import Message
    from backends.llamacpp.sampling import sampler_for

    spy = Spy(llama_cpp)
    request = ChatRequest((Message("user", "hi"),), SamplingParams(dry_multiplier=0.8, **settings))
    chain = sampler_for(spy, llama_backend._llm, request, 2048)
    llama_cpp.llama_sampler_free(chain)
    assert spy.dry[0] == pytest.approx(expected[0]) and spy.dry[1:] == expected[1:]


def test_dry_changes_a_greedy_continuation_only_beyond_its_allowed_length(client):
    text = "apples and pears, apples and pears, apples and pears, apples and pears,"
    greedy = dict(max_new_tokens=24, temperature=0.0, seed=0)
    plain = client.predict(text, **greedy, api_name="/complete")
    dry = client.predict(text, **greedy, dry_multiplier=2.0, api_name="/complete")
    lenient = client.predict(text, **greedy, dry_multiplier=2.0, dry_allowed_length=1000, api_name="/complete")
    assert dry != plain, "DRY did not change a repeating continuation"
    assert lenient == plain, "repeats shorter than dry_allowed_length are not penalised"


def test_v1_takes_the_breakers_as_a_list_and_refuses_bad_ones_by_name(live_app, live_oai):
    body = {"dry_multiplier": 0.8, "dry_base": 2.0, "dry_sequence_breakers": ["\n", ":"]}
    done = live_oai.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=2, extra_body=body)
    assert done.choices[0].message.content is not None
    (last,) = live_app.manager.metrics.recent(1)
    assert last.sampling["dry_base"] == 2.0 and json.loads(last.sampling["dry_sequence_breakers"]) == ["\n", ":"]
    for bad in (["x" * 41], [""], "not json"):
        with pytest.raises(openai.BadRequestError) as err:
            live_oai.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=2, extra_body={**body, "dry_sequence_breakers": bad})
        assert "dry_sequence_breakers" in str(err.value)
