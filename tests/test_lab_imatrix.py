"""Importance-matrix quantization on the embedded model, through the real engine: the app's matrix
equals llama-imatrix's on the same text (where the tool is built), and quantizing Q2_K and Q3_K_M
with it lowers the KLD against the F16 on held-out text (Evaluate's default text, which the
calibration text does not overlap); each +imatrix variant's provenance names the calibration text
and its size."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backends.errors import InvalidRequest
from backends.files import gguf, imatrix_file
from backends.llamacpp.open import safe_model_params
from optimization import imatrix
from optimization.lab import Lab
from tests.conftest import make_manager, require_or_skip

pytestmark = pytest.mark.slow
CALIBRATION_CHARS = 5_000  # 2 chunks of 512 tokens (the least llama-imatrix takes): enough for the direction


def llama_imatrix() -> Path | None:
    tools_dir = os.environ.get("QUANTLAB_TOOLS_DIR")
    for d in (os.environ.get("QUANTLAB_LLAMA_TOOLS"), tools_dir and Path(tools_dir) / "bin",
              Path.home() / ".cache/quantlab-tools/bin"):
        if d and (Path(d) / "llama-imatrix").is_file():
            return Path(d) / "llama-imatrix"
    return None


@pytest.fixture(scope="module")
def calibrated(cache_dir, tmp_path_factory):
    """The embedded model's importance matrix from a calibration file, computed by the app once."""
    text = tmp_path_factory.mktemp("calib") / "calibration.txt"
    text.write_text(imatrix_file.default_calibration_text()[:CALIBRATION_CHARS], encoding="utf-8")
    lab = Lab(make_manager(cache_dir=cache_dir))
    record = imatrix.compute(lab, "embedded", str(text))
    return lab, text, record


def test_the_apps_imatrix_equals_llama_imatrix_on_the_same_text(calibrated, cache_dir, embedded_gguf, tmp_path):
    binary = llama_imatrix()
    if binary is None:
        require_or_skip("llama-imatrix not found (QUANTLAB_LLAMA_TOOLS, $QUANTLAB_TOOLS_DIR/bin or "
                        "~/.cache/quantlab-tools/bin): bash benchmarks/build_llama_tools.sh builds it")
    _, text, record = calibrated
    f16 = gguf.gguf_variant(embedded_gguf, "F16", cache_dir)  # the weights the app computed it on
    out = tmp_path / "tool.gguf"
    done = subprocess.run([str(binary), "-m", str(f16), "-f", str(text), "-o", str(out), "-c", "512", "-b", "512",
                           "-ub", "512", "--no-ppl", "-t", "2", *(["--no-repack"] if safe_model_params() else [])],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tool, app = imatrix_file.read_imatrix(out), imatrix_file.read_imatrix(Path(record["path"]))
    assert app.chunk_count == tool.chunk_count == record["chunks"] and app.chunk_size == tool.chunk_size == 512
    assert set(app.sums) == set(tool.sums) and len(tool.sums) == 210  # 30 layers x 7 matrices
    for name in tool.sums:
        np.testing.assert_array_equal(app.counts[name], tool.counts[name])
        # same kernels, another build of them: float rounding only
        np.testing.assert_allclose(app.importance()[name], tool.importance()[name], rtol=2e-3, atol=1e-6)


def test_imatrix_lowers_the_kld_of_q2_k_and_q3_k_on_held_out_text(calibrated):
    lab, text, record = calibrated
    rows = lab.evaluate("embedded", imatrix.imatrix_variants(["Q2_K", "Q3_K_M"]), reference="llamacpp:F16",
                        max_tokens=256, window=128, decode_tokens=0)  # default text: not the calibration text
    by = {r.variant: r for r in rows}
    gain = {g["type"]: g for g in imatrix.gain([r.as_dict() for r in rows])}
    for t in ("Q2_K", "Q3_K_M"):
        plain, with_ = by[f"llamacpp:{t}"], by[f"llamacpp:{t}+imatrix"]
        print(f"{t}: KLD {plain.kld_mean:.4f} -> {with_.kld_mean:.4f} with the imatrix ({gain[t]['kld_change_pct']:+.1f} %)")
        assert with_.kld_mean < plain.kld_mean
        assert with_.quantization == f"{t}+imatrix" and plain.quantization == t
        # provenance names the calibration text and its size
        assert text.name in with_.note and f"{record['calibration_bytes']:,} bytes" in with_.note
        assert "importance matrix" not in (plain.note or "")


def test_a_calibration_text_shorter_than_two_chunks_is_a_clear_error(calibrated, tmp_path):
    lab, _, _ = calibrated
    short = tmp_path / "short.txt"
    short.write_text("A few words are not enough to calibrate on.\n" * 10)
    with pytest.raises(InvalidRequest, match="at least 1,024"):
        imatrix.compute(lab, "embedded", str(short))
    with pytest.raises(InvalidRequest, match="No calibration text"):
        imatrix.compute(lab, "embedded", str(tmp_path / "missing.txt"))
