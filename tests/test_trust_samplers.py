"""Each extra sampler does something, alone: through the real `openai` client on the real app, a seeded
sample with one sampler set differs from the same seeded sample with every sampler neutral, and repeats
exactly under the same seed; on each backend, for every sampler that backend declares (a sampler that
silently does nothing, e.g. one left out of llama.cpp's chain, fails its test here).

Settings are strong and the samples long and hot enough that a working sampler must change them:
truncation samplers (typical, min-p, XTC, mirostat) on an open prompt at temperature 1, penalties
(presence, frequency, DRY, no-repeat n-gram) on a prompt whose reply repeats itself.
"""

from __future__ import annotations

import openai
import pytest

from backends.registry import default_registry
from tests.test_trust_v1 import hf_app  # noqa: F401 - the transformers server fixture

pytestmark = pytest.mark.slow

OPEN = "Write a short poem about the sea."
REPEAT = "Repeat the word hello twenty times."
# sampler (as a backend declares it; mirostat once per version) -> (prompt, the request's extra fields)
SETTINGS: dict[str, tuple[str, dict]] = {
    "typical_p": (OPEN, {"typical_p": 0.2}),
    "min_p": (OPEN, {"min_p": 0.3}),
    "xtc_probability": (OPEN, {"xtc_probability": 1.0, "xtc_threshold": 0.05}),
    "mirostat-1": (OPEN, {"mirostat": 1}),
    "mirostat-2": (OPEN, {"mirostat": 2}),
    "presence_penalty": (REPEAT, {"presence_penalty": 1.5}),
    "frequency_penalty": (REPEAT, {"frequency_penalty": 1.5}),
    "dry_multiplier": (REPEAT, {"dry_multiplier": 1.0}),
    "no_repeat_ngram_size": (REPEAT, {"no_repeat_ngram_size": 2}),
}
BACKENDS = ("llamacpp", "transformers")
# The samples' temperature (1.0) where a backend's seeded sample of REPEAT does not repeat itself there:
# llama.cpp with flash attention (its default) wanders off at 1.0 ("Ladım. (Doun) praise peace ..."),
# leaving DRY nothing to act on; at 0.5 it repeats "Hello, hello, ..." as the penalties need.
TEMPERATURE = {("llamacpp", "presence_penalty"): 0.5, ("llamacpp", "frequency_penalty"): 0.5,
               ("llamacpp", "dry_multiplier"): 0.5}


def declared(backend: str) -> list[str]:
    """The samplers ``backend`` says it honours, mirostat once per version."""
    out = []
    for name in sorted(default_registry().get(backend).samplers):
        out += ["mirostat-1", "mirostat-2"] if name == "mirostat" else [name]
    return out


PAIRS = [(b, s) for b in BACKENDS for s in declared(b)]


@pytest.fixture(scope="module")
def oai(request):
    """An `openai` client on the app serving the embedded model with ``request.param``'s backend."""
    srv = request.getfixturevalue("live_app" if request.param == "llamacpp" else "hf_app")
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    yield c
    c.close()


@pytest.fixture(scope="module")
def neutral_samples() -> dict:
    return {}


def sample(oai, prompt: str, temperature: float = 1.0, **extra) -> str:
    r = oai.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}], max_tokens=40,
                                    temperature=temperature, top_p=1.0, seed=7, extra_body={"top_k": 0, **extra})
    return r.choices[0].message.content


def test_every_declared_sampler_has_a_setting_here():
    for backend in BACKENDS:
        assert set(declared(backend)) <= set(SETTINGS), f"{backend} declares a sampler this file does not test"


@pytest.mark.parametrize("oai,sampler", PAIRS, indirect=["oai"], ids=[f"{b}-{s}" for b, s in PAIRS])
def test_each_sampler_alone_changes_a_seeded_sample_and_repeats_under_the_seed(oai, sampler, neutral_samples, request):
    prompt, extra = SETTINGS[sampler]
    temperature = TEMPERATURE.get((request.node.callspec.params["oai"], sampler), 1.0)
    key = (id(oai), prompt, temperature)
    if key not in neutral_samples:
        neutral_samples[key] = [sample(oai, prompt, temperature) for _ in range(2)]
    neutral = neutral_samples[key]
    assert neutral[0] == neutral[1], "the neutral seeded sample does not repeat (the comparison would mean nothing)"
    first, again = sample(oai, prompt, temperature, **extra), sample(oai, prompt, temperature, **extra)
    assert first.strip()
    assert first == again, f"{sampler}: the same seed gave two different samples"
    assert first != neutral[0], f"{sampler} {extra} changed nothing: {first!r}"
