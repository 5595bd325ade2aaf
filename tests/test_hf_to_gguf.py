"""Any checkpoint to GGUF: a tiny random full-precision Llama (SmolLM2's real tokenizer) becomes a GGUF
F16 through llama.cpp's own convert_hf_to_gguf.py, and every GGUF type from it; checked against
transformers' own logits, by KLD ordering in the lab, and through the Gradio endpoint."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from backends.files import hf_to_gguf
from backends.errors import ModelLoadError
from backends.files.hf_convert import hf_checkpoint_from_gguf
from tests.test_hub import hub  # noqa: F401 - the fixture: an offline Hugging Face cache at HF_HUB_CACHE

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

TEXT = ("The quick brown fox jumps over the lazy dog. In the beginning was the word, and the word was "
        "written down, then read again by someone who had never seen it before.")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, cache_dir, embedded_gguf):
    """A random fp32 Llama (hidden 256, 2 layers) saved as safetensors with SmolLM2's tokenizer (from
    the checkpoint the transformers tests derive). initializer_range 0.5: far from uniform logits."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(hf_checkpoint_from_gguf(embedded_gguf, cache_dir)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.5, tie_word_embeddings=False, rms_norm_eps=1e-5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    out = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    assert any(out.glob("*.safetensors")) and json.loads((out / "config.json").read_text())["dtype"] == "float32"
    return out, model, tok


@pytest.fixture(scope="module")
def f16(tiny_llama, cache_dir):
    lines = []
    path = hf_to_gguf.convert_checkpoint(tiny_llama[0], cache_dir, lambda f, m: lines.append((f, m)))
    return path, lines


def test_conversion_reports_progress_and_caches(f16, tiny_llama, cache_dir):
    path, lines = f16
    assert path.name == "tiny-llama.F16.gguf" and path.is_file()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    fractions = [f for f, _ in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("layer 2 of 2" in m for _, m in lines) and any("Writing" in m for _, m in lines)
    from backends.files.gguf import gguf_file_type, read_gguf_metadata

    assert gguf_file_type(path) == "F16"
    assert read_gguf_metadata(path)["general.architecture"] == "llama"
    again = []
    assert hf_to_gguf.convert_checkpoint(tiny_llama[0], cache_dir, lambda f, m: again.append(m)) == path
    assert len(again) == 1 and "in the cache" in again[0]  # no second conversion


def test_f16_logits_match_transformers_fp32(f16, tiny_llama):
    """Tolerance: max |logit diff| <= 2.5x what rounding the weights to fp16 in transformers itself
    does, mean |diff| <= 0.5 % of the largest |logit|, argmax agreement >= 90 %."""
    from backends.llamacpp.open import open_llama

    _, model, tok = tiny_llama
    ids = tok(TEXT)["input_ids"]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    llm = open_llama(str(f16[0]), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    try:
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids  # the same tokenizer
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()
    import copy

    rounded = copy.deepcopy(model).to(torch.float16).to(torch.float32)  # the weights as F16 stores them
    with torch.inference_mode():
        ref16 = rounded(torch.tensor([ids])).logits[0].float().numpy()
    diff = float(np.abs(got - ref).max())
    rounding = float(np.abs(ref16 - ref).max())
    scale = float(np.abs(ref).max())
    mean = float(np.abs(got - ref).mean())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"\nlogits, {len(ids)} positions: max |logit| {scale:.2f}; llama.cpp F16 vs transformers fp32: max |diff| "
          f"{diff:.4f}, mean {mean:.4f}, argmax agreement {agree:.3f}; transformers with the weights rounded "
          f"to fp16 vs fp32: max |diff| {rounding:.4f}")
    assert scale > 5  # the init really gives peaked logits, so the comparison means something
    # F16 weights alone move this (chaotic, std 0.5) model's logits by `rounding`; llama.cpp also rounds
    # activations to f16 for its matmuls. A wrong tensor map (a permuted Q/K, a missing norm) moves them
    # by the logit scale itself.
    assert diff <= 2.5 * rounding
    assert mean <= 0.005 * scale
    assert agree >= 0.9


def test_quantized_variants_order_by_kld_in_the_lab(f16, tiny_llama, cache_dir):
    """Q8_0, Q4_K_M and Q2_K of the converted F16 (made beside it), measured by the lab against the F16."""
    from tests.conftest import make_manager, make_services

    services = make_services(make_manager(cache_dir=cache_dir))
    rows = services.evaluate(["llamacpp:Q8_0", "llamacpp:Q4_K_M", "llamacpp:Q2_K"], "", 256,
                             str(tiny_llama[0]), "llamacpp:F16", 128)
    services.release_lab()
    kld = {r["quantization"]: r["kld_mean"] for r in rows if not r["is_reference"]}
    print(f"\nKLD vs F16: {kld}")
    assert kld["Q8_0"] < kld["Q4_K_M"] < kld["Q2_K"]
    assert kld["Q2_K"] > 10 * kld["Q8_0"]  # a real spread, not noise
    names = sorted(p.name for p in f16[0].parent.glob("*.gguf"))
    assert names == ["tiny-llama.F16.gguf", "tiny-llama.Q2_K.gguf", "tiny-llama.Q4_K_M.gguf", "tiny-llama.Q8_0.gguf"]
    rows_cached = [i for i in services.cached_models() if i.get("folder") == str(f16[0].parent)]
    assert {i["quantization"] for i in rows_cached} == {"F16", "Q8_0", "Q4_K_M", "Q2_K"}
    assert all(i["source"] == "tiny-llama" and i["source_type"] == "fp32" for i in rows_cached)


def clone(src, dst):
    """A copy of a checkpoint folder whose files are hard links (the disk is shared); edit a file only
    through ``rewrite``, which replaces the link instead of writing through it."""
    return shutil.copytree(src, dst, copy_function=os.link)


def rewrite(path, data: dict) -> None:
    path.unlink()
    path.write_text(json.dumps(data))


def _gguf_files(cache_dir):
    base = cache_dir / "gguf"
    return sorted(str(p) for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


def test_not_a_checkpoint_is_a_clear_error_and_leaves_nothing(tmp_path, cache_dir, tiny_llama):
    before = _gguf_files(cache_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a checkpoint folder: it has no config.json"):
        hf_to_gguf.convert_checkpoint(empty, cache_dir)
    # a checkpoint that ships its own code: the converter would run it (trust_remote_code), so it is refused
    custom = clone(tiny_llama[0], tmp_path / "custom")
    tc = json.loads((custom / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    rewrite(custom / "tokenizer_config.json", tc)
    with pytest.raises(ModelLoadError, match="ships its own Python code"):
        hf_to_gguf.convert_checkpoint(custom, cache_dir)
    # config and weights, but an architecture llama.cpp's converter does not know: its error, no file left
    odd = clone(tiny_llama[0], tmp_path / "odd")
    cfg = json.loads((odd / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    rewrite(odd / "config.json", cfg)
    with pytest.raises(ModelLoadError, match="converter could not convert odd: .*NoSuchModelForCausalLM"):
        hf_to_gguf.convert_checkpoint(odd, cache_dir)
    assert _gguf_files(cache_dir) == before


def test_endpoint_streams_progress_and_ends_with_cache_rows(tiny_llama, cache_dir, tmp_path):
    """/convert_to_gguf through gradio_client on a fresh copy (so it really converts), then loading the
    checkpoint with the llama.cpp backend serves the converted model."""
    from gradio_client import Client

    from backends.base import ModelSpec
    from tests.conftest import LiveServer, make_settings

    ckpt = clone(tiny_llama[0], tmp_path / "tiny-copy")
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        client = Client(srv.url, verbose=False)
        try:
            job = client.submit(str(ckpt), ["Q4_K_M"], api_name="/convert_to_gguf")
            seen = [status for status, _ in job]
            final_status, rows = job.result()
            bad = client.submit(str(tmp_path), [], api_name="/convert_to_gguf")
            with pytest.raises(Exception, match="not a checkpoint folder"):
                bad.result()
        finally:
            client.close()
        assert any("% · Converting tiny-copy: layer" in s for s in seen), seen
        assert final_status.startswith("Made tiny-copy.F16.gguf, tiny-copy.Q4_K_M.gguf")
        assert [r["quantization"] for r in rows] == ["F16", "Q4_K_M"]
        assert all(r["id"].startswith("gguf:tiny-copy-") and r["source"] == "tiny-copy" for r in rows)
        info = srv.manager.load(ModelSpec(source=str(ckpt), backend="llamacpp", quantization="Q4_K_M", n_ctx=256))
        assert info.quantization == "Q4_K_M" and info.name + ".gguf" == rows[1]["repo_id"]  # the cached variant
        srv.manager.unload()


def test_missing_converter_source_is_a_typed_error_saying_how_to_get_it(tmp_path, monkeypatch):
    from backends.files.gguf_converter import ConverterUnavailable, ensure_converter

    monkeypatch.setenv("QUANTLAB_LLAMA_SDIST", str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(ConverterUnavailable, match=r"pip download --no-deps --no-binary :all: llama-cpp-python==\d"):
        ensure_converter(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_hub_repo_id_converts_from_its_snapshot(hub, tiny_llama, cache_dir):
    """A repo id (here: in the Hugging Face cache, offline) resolves through the Hub download code and
    converts; the F16 is named after the repo, not the snapshot's commit."""
    from tests.test_hub import add_repo

    add_repo(hub, "quantlab-test/tiny-llama", {p.name: p for p in tiny_llama[0].iterdir() if p.is_file()})
    lines = []
    paths = hf_to_gguf.convert_source("quantlab-test/tiny-llama", cache_dir, ["Q8_0"],
                                      progress=lambda f, m: lines.append((f, m)))
    assert [p.name for p in paths] == ["quantlab-test--tiny-llama.F16.gguf", "quantlab-test--tiny-llama.Q8_0.gguf"]
    assert all(p.is_file() and p.parent == paths[0].parent for p in paths)
    assert [f for f, _ in lines] == sorted(f for f, _ in lines)


def test_stopping_a_conversion_kills_the_converter_and_leaves_nothing(tiny_llama, cache_dir, tmp_path):
    """The Gradio handler's generator closed mid-conversion (Stop, client gone): the converter
    subprocess is killed and its partial file removed."""
    import threading
    import time

    from tests.conftest import make_manager, make_services

    ckpt = clone(tiny_llama[0], tmp_path / "tiny-stopped")
    before = _gguf_files(cache_dir)
    steps = make_services(make_manager(cache_dir=cache_dir)).convert_to_gguf(str(ckpt), "Q8_0")
    for _, text, _ in steps:
        if "layer" in text:  # the converter is running
            break
    else:
        pytest.fail("no layer progress before the end")
    steps.close()
    deadline = time.time() + 30
    while time.time() < deadline and (_gguf_files(cache_dir) != before or any(
            t.name == "convert-gguf" and t.is_alive() for t in threading.enumerate())):
        time.sleep(0.1)
    assert _gguf_files(cache_dir) == before
    assert not hf_to_gguf.f16_path(ckpt, cache_dir).parent.exists()


def test_a_real_llama_checkpoint_converts_faithfully(cache_dir, embedded_gguf):
    """SmolLM2-135M as a transformers fp32 checkpoint (derived from the embedded GGUF, as the
    transformers tests do) through the converter: llama.cpp F16 logits within 0.5 % of the largest
    |logit| of transformers' fp32 ones, same argmax."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backends.llamacpp.open import open_llama

    ckpt = hf_checkpoint_from_gguf(embedded_gguf, cache_dir)
    f16 = hf_to_gguf.convert_checkpoint(ckpt, cache_dir)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    ids = tok(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    del model
    llm = open_llama(str(f16), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()
    diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"\nSmolLM2-135M F16 vs fp32: max |diff| {diff:.4f}, max |logit| {scale:.2f}, argmax agreement {agree:.3f}")
    assert diff <= 0.005 * scale
    assert agree >= 0.97


def test_loading_a_checkpoint_with_llamacpp_converts_then_quantizes_with_progress(tiny_llama, cache_dir, tmp_path):
    from tests.conftest import make_manager, make_services

    ckpt = clone(tiny_llama[0], tmp_path / "tiny-load")
    manager = make_manager(cache_dir=cache_dir)
    services = make_services(manager)
    try:
        steps = list(services.load_steps(str(ckpt), "llamacpp", "Q8_0", n_ctx=256, parallel=1))
        lines = [text for _, text in steps]
        assert [f for f, _ in steps] == sorted(f for f, _ in steps)
        assert any("Converting tiny-load: layer 2 of 2" in t for t in lines), lines
        assert any("Making the Q8_0 variant" in t for t in lines)
        assert lines[-1].startswith("Loaded tiny-load.Q8_0 · llamacpp · Q8_0")
        *_, (reply, stats) = services.chat("Hello", [], "", 8, 0.0, 1.0, 0, 1.0, 0)
        assert stats["completion_tokens"] > 0  # random weights, served like any model
    finally:
        manager.unload()
    assert sorted(p.name for p in hf_to_gguf.f16_path(ckpt, cache_dir).parent.glob("*.gguf")) == [
        "tiny-load.F16.gguf", "tiny-load.Q8_0.gguf"]
