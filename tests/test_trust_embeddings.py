"""/v1/embeddings returns the right vectors: through the real `openai` client on the app serving the
embedded model, each vector is within cosine 0.99 of a reference computed independently with
llama-cpp-python on the same GGUF (an embedding context pooling by the mean, L2-normalised). Pooling
by the last token or the first instead lands far from it (checked here too, so the bound means
something for these texts)."""

from __future__ import annotations

import math

import openai
import pytest

pytestmark = pytest.mark.slow

TEXTS = ["The cat sat on the mat.",
         "Quarterly revenue grew four percent, driven by strong demand for cloud services in Europe.",
         "How do I bake bread at home without a bread machine?",
         "Hello"]


def cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def references(embedded_gguf) -> dict[str, list[list[float]]]:
    """Per pooling ("mean", "last", "cls"): each text's L2-normalised embedding, straight from
    llama-cpp-python (built through open_llama, as the app builds its own: a plain Llama() crashes on
    CPUs with Intel AMX)."""
    import llama_cpp

    from backends.llamacpp.open import open_llama

    out = {}
    for name, pooling in (("mean", llama_cpp.LLAMA_POOLING_TYPE_MEAN), ("last", llama_cpp.LLAMA_POOLING_TYPE_LAST),
                          ("cls", llama_cpp.LLAMA_POOLING_TYPE_CLS)):
        llm = open_llama(str(embedded_gguf), embedding=True, pooling_type=pooling, n_ctx=512, n_batch=512,
                         n_threads=2, verbose=False)
        try:
            out[name] = [llm.embed(t, normalize=True) for t in TEXTS]
        finally:
            llm.close()
    return out


def test_embeddings_are_the_mean_pooled_normalised_vectors(live_app, references):
    oai = openai.OpenAI(base_url=live_app.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    try:
        got = [d.embedding for d in oai.embeddings.create(model="default", input=TEXTS).data]
        alone = oai.embeddings.create(model="default", input=TEXTS[1]).data[0].embedding
    finally:
        oai.close()
    assert len(got) == len(TEXTS) and all(len(v) == len(references["mean"][0]) for v in got)
    for text, v, ref in zip(TEXTS, got, references["mean"]):
        assert sum(x * x for x in v) == pytest.approx(1.0, abs=1e-4), f"{text!r}: not L2-normalised"
        assert cos(v, ref) >= 0.99, f"{text!r}: cosine {cos(v, ref):.3f} to the mean-pooled reference"
    assert cos(alone, got[1]) >= 0.999, "a text's vector depends on what else was in the request"
    # the bound tells poolings apart on these texts (else a wrong pooling would pass)
    multi_token = [i for i, t in enumerate(TEXTS) if len(t.split()) > 1]
    for other in ("last", "cls"):
        assert all(cos(references[other][i], references["mean"][i]) < 0.99 for i in multi_token), other
