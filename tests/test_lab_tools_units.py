"""Fast tier for the lab's importance matrix, fit advisor and report card: the imatrix file format,
variant names, the gain table, budgets, the advisor's fit rule on the embedded model's header, and the
report card's figures against a stored Evaluate row. Real models run in tests/test_lab_imatrix.py and
tests/test_lab_fit_report.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from backends.errors import InvalidRequest
from backends.files import imatrix_file
from backends.files.sources import embedded_model_path
from optimization import fit, imatrix, measurements, report


def test_an_imatrix_file_reads_back_what_was_written(tmp_path):
    sums = {"blk.0.attn_q.weight": np.arange(8, dtype=np.float32).reshape(1, 8),
            "blk.0.ffn_down_exps.weight": np.ones((3, 4), dtype=np.float32)}
    counts = {"blk.0.attn_q.weight": np.array([16.0]), "blk.0.ffn_down_exps.weight": np.array([2.0, 0.0, 4.0])}
    path = tmp_path / "m.gguf"
    imatrix_file.write_imatrix(path, sums, counts, ["calib.txt"], chunk_count=3, chunk_size=512)
    back = imatrix_file.read_imatrix(path)
    assert back.datasets == ["calib.txt"] and back.chunk_count == 3 and back.chunk_size == 512
    np.testing.assert_array_equal(back.sums["blk.0.attn_q.weight"], sums["blk.0.attn_q.weight"])
    imp = back.importance()
    np.testing.assert_allclose(imp["blk.0.attn_q.weight"], np.arange(8) / 16)
    # llama-quantize's rule: sums / count per expert, 1 where an expert was never routed to
    np.testing.assert_allclose(imp["blk.0.ffn_down_exps.weight"], [0.5] * 4 + [1.0] * 4 + [0.25] * 4)


def test_a_file_that_is_not_an_imatrix_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(Exception, match="not an importance matrix"):
        imatrix_file.read_imatrix(bad)


def test_imatrix_variant_names_read_well_and_normalize():
    from backends.llamacpp.backend import LlamaCppBackend

    assert imatrix_file.split_quant("Q4_K_M+imatrix") == ("Q4_K_M", True)
    assert imatrix_file.split_quant("Q4_K_M") == ("Q4_K_M", False)
    assert LlamaCppBackend.normalize_quantization("q4_k_m+imatrix") == "Q4_K_M+imatrix"
    assert imatrix.imatrix_variants(["q2_k", "Q3_K_M"]) == ["llamacpp:Q2_K", "llamacpp:Q2_K+imatrix",
                                                           "llamacpp:Q3_K_M", "llamacpp:Q3_K_M+imatrix"]
    with pytest.raises(InvalidRequest, match="low-bit"):
        imatrix.imatrix_variants(["F16"])


def test_the_calibration_text_is_not_the_default_evaluation_text():
    from optimization.quality import STDLIB_MODULES, stdlib_text

    assert not set(imatrix_file.CALIBRATION_MODULES) & set(STDLIB_MODULES)
    calib = imatrix_file.default_calibration_text()
    assert len(calib) > 20_000 and stdlib_text()[:500] not in calib


def test_gain_pairs_each_type_with_its_imatrix_variant():
    rows = [{"variant": "llamacpp:F16", "is_reference": True, "kld_mean": 0.0},
            {"variant": "llamacpp:Q2_K", "is_reference": False, "kld_mean": 0.4, "kld_p99": 3.0,
             "top1_agreement": 0.7, "ppl": 20.0},
            {"variant": "llamacpp:Q2_K+imatrix", "is_reference": False, "kld_mean": 0.3, "kld_p99": 2.0,
             "top1_agreement": 0.75, "ppl": 18.0}]
    (g,) = imatrix.gain(rows)
    assert g["type"] == "Q2_K" and g["kld_mean_without"] == 0.4 and g["kld_mean_with"] == 0.3
    assert g["kld_change_pct"] == -25.0


@pytest.mark.parametrize("text,mib", [("2048", 2048), ("2GiB", 2048), ("512 MiB", 512), (300, 300)])
def test_budgets_read_as_mib(text, mib):
    assert fit.parse_budget(text) == mib * 2**20


@pytest.mark.parametrize("text", ["auto", "", "machine", None, 0])
def test_auto_budget_means_this_machine(text):
    assert fit.parse_budget(text) is None


def test_a_budget_that_is_no_size_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="MiB"):
        fit.parse_budget("lots")


def test_this_machine_without_a_gpu_is_its_ram():
    budget, where = fit.machine_budget(None, on_gpu=True)
    assert budget > 0 and "RAM" in where


def _row(variant, kld, weights_mib, **extra):
    return {"variant": variant, "backend": "llamacpp", "quantization": variant.split(":")[1], "ppl": 10.123456,
            "kld_mean": kld, "kld_p99": kld * 5, "top1_agreement": 0.91234, "tokens": 256, "footprint_mib": 200.0,
            "eval_tokens_per_s": 500.0, "decode_tokens_per_s": 123.456, "is_reference": kld == 0.0, "bpw": 8.5,
            "source": "SmolLM2.gguf", "source_type": "Q4_1", "note": "from Q4_1", "warning": None,
            "tensors": "Q8_0: 211 q8_0", "memory": {"weights_bytes": int(weights_mib * 2**20), "weights_mib": weights_mib,
                                                    "kv_mib": 45.0, "overhead_mib": 48.0, "n_ctx": 2048, "slots": 1,
                                                    "kv_type": "f16"}, **extra}


def test_the_advisor_lists_as_fitting_only_pairs_within_the_budget_with_their_tolerance(tmp_path):
    measurements.record(tmp_path, "embedded", [_row("llamacpp:F16", 0.0, 257.0), _row("llamacpp:Q8_0", 0.004, 137.0)],
                        reference="llamacpp:F16", text=None, max_tokens=256, window=128, scoring="all", machine={})
    budget = 300 * 2**20
    rows = fit.advise(embedded_model_path(), "embedded", tmp_path, budget, n_ctx=2048, slots=1)
    assert {(r.weights, r.kv) for r in rows} >= {("Q8_0", "q4_0"), ("Q2_K", "f16")}
    for r in rows:
        assert r.fits == (r.predicted_mib * 2**20 * (1 + r.tolerance_pct / 100) <= budget + 2**20 * 0.1)
    best = [r for r in rows if r.recommended]
    assert len(best) == 1 and best[0].fits and best[0].measured
    # F16 (KLD 0) does not fit 300 MiB at 2048 ctx; Q8_0 (measured weights 137 MiB) does
    assert best[0].weights == "Q8_0" and best[0].basis == "measured"
    assert rows[0].kld_mean == 0.0 and not rows[0].fits  # sorted by quality: the reference first
    text = fit.table_text(rows, "300 MiB budget")
    assert "Recommended: llamacpp:Q8_0" in text and "not measured yet" in text


def test_nothing_fits_a_tiny_budget(tmp_path):
    rows = fit.advise(embedded_model_path(), "embedded", tmp_path, 10 * 2**20, n_ctx=2048, slots=1)
    assert not any(r.fits or r.recommended for r in rows)
    assert "Nothing fits" in fit.table_text(rows, "10 MiB")


def test_the_report_card_prints_evaluates_figures(tmp_path):
    row = _row("llamacpp:Q8_0", 0.004321987, 137.0)
    measurements.record(tmp_path, "embedded", [_row("llamacpp:F16", 0.0, 257.0), row], reference="llamacpp:F16",
                        text=None, max_tokens=256, window=128, scoring="all",
                        machine={"cpu": "Test CPU", "cores": 2, "ram_gib": 8.0, "gpus": []})
    md = report.report_card(tmp_path, "embedded", "llamacpp:Q8_0", plot_file="evaluate.png")
    assert "| KLD mean vs reference | 0.0043 |" in md and "| Top-1 agreement % | 91.2 |" in md
    assert "| Perplexity | 10.12 |" in md and "| Decode tok/s | 123.5 |" in md
    assert "![KLD vs memory" in md and "Test CPU" in md and "Importance matrix: no" in md
    block = re.search(r"```json\n(.*?)\n```", md, re.S).group(1)
    assert json.loads(block)["kld_mean"] == row["kld_mean"]
    with pytest.raises(InvalidRequest, match="has not been evaluated"):
        report.report_card(tmp_path, "embedded", "llamacpp:Q2_K")


def test_the_report_card_shows_arena_results_when_given(tmp_path):
    measurements.record(tmp_path, "embedded", [_row("llamacpp:Q8_0", 0.004, 137.0)], reference="llamacpp:F16",
                        text=None, max_tokens=256, window=128, scoring="all", machine={})
    md = report.report_card(tmp_path, "embedded", "llamacpp:Q8_0",
                            arena=[{"opponent": "llamacpp:Q2_K", "wins": 7, "losses": 2, "ties": 1, "both_bad": 0,
                                    "win_rate": 0.7, "ci_low": 0.4, "ci_high": 0.89}])
    assert "## Blind arena" in md and "| llamacpp:Q2_K | 7 | 2 | 1 | 0 | 70% (40–89%) |" in md


@pytest.mark.slow  # three interpreters starting the app's imports: seconds each
def test_the_fit_flag_prints_the_table_and_the_pick(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "QUANTLAB_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run([sys.executable, "app.py", *a], cwd=root, env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    done = run("--fit", "300", "--fit-only", "--n-ctx", "2048", "--parallel", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Budget: 300 MiB budget" in done.stdout and "Recommended: llamacpp:" in done.stdout
    assert "not measured yet" in done.stdout
    nothing = run("--fit", "10", "--fit-only")
    assert nothing.returncode == 2 and "Nothing fits" in nothing.stdout
    bad = run("--fit", "lots", "--fit-only")
    assert bad.returncode == 2 and "MiB" in bad.stderr


def test_the_report_card_uses_evaluates_decimals():
    from ui.lab import EVAL_COLUMNS

    table = {field: d for _, field, d in EVAL_COLUMNS}
    assert {f: d for _, f, d in report.FIGURES if f in table} == {f: table[f] for _, f, d in report.FIGURES if f in table}


def test_evaluates_legend_shows_what_the_imatrix_buys_when_both_were_evaluated():
    from ui.lab import evaluate_legend

    rows = [_row("llamacpp:F16", 0.0, 257.0), _row("llamacpp:Q2_K", 0.4, 90.0), _row("llamacpp:Q2_K+imatrix", 0.3, 90.0)]
    assert "Q2_K: KLD 0.4000 -> 0.3000 (-25.0 %)" in evaluate_legend(rows, "all")
    assert "importance matrix" not in evaluate_legend(rows[:2], "all")


def test_an_imatrix_variant_of_a_float_type_is_refused_before_any_work(tmp_path):
    from backends.llamacpp.imatrix import imatrix_variant

    with pytest.raises(InvalidRequest, match="not F16"):
        imatrix_variant(embedded_model_path(), "F16", tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_report_card_reads_the_arenas_votes_from_the_variants_side(tmp_path):
    """Votes kept by the blind arena reach the report card of either contender, each from its own side
    (its wins, its win rate and the interval mirrored for the second of the pair)."""
    from optimization.arena import ArenaStore, arena_dir, standing

    store = ArenaStore(arena_dir(tmp_path))

    def side(name):
        return {"name": name, "text": name, "finish_reason": "stop", "figures": {}}

    for choice in ("Q2", "Q2", "Q8", "tie"):
        shown = store.open_round("p", side("llamacpp:Q2_K"), side("llamacpp:Q8_0"))
        revealed = store.vote(shown["round"], "tie") if choice == "tie" else None
        if revealed is None:
            letter = next(s for s in ("A", "B") if shown[s]["text"] == ("llamacpp:Q2_K" if choice == "Q2" else
                                                                          "llamacpp:Q8_0"))
            store.vote(shown["round"], letter)
    [q8] = standing(tmp_path, {"llamacpp:Q8_0"})
    [q2] = standing(tmp_path, {"llamacpp:Q2_K"})
    assert (q8["opponent"], q8["wins"], q8["losses"], q8["ties"]) == ("llamacpp:Q2_K", 1, 2, 1)
    assert (q2["opponent"], q2["wins"], q2["losses"]) == ("llamacpp:Q8_0", 2, 1)
    assert q8["win_rate"] == pytest.approx(1 / 3) and q2["win_rate"] == pytest.approx(2 / 3)
    assert q8["ci_low"] == pytest.approx(1 - q2["ci_high"]) and q8["ci_high"] == pytest.approx(1 - q2["ci_low"])
    measurements.record(tmp_path, "embedded", [_row("llamacpp:Q8_0", 0.004, 137.0)], reference="llamacpp:F16",
                        text=None, max_tokens=256, window=128, scoring="all", machine={})
    md = report.report_card(tmp_path, "embedded", "llamacpp:Q8_0", arena=standing(tmp_path, {"llamacpp:Q8_0"}))
    assert "| llamacpp:Q2_K | 1 | 2 | 1 | 0 | 33%" in md
