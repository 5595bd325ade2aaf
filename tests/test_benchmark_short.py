"""The serving benchmark's CI mode runs end to end and writes well-formed results.

Structure and sanity only: absolute times depend on the machine and are never asserted.
"""

from __future__ import annotations

import pytest

import json
import math
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_short_benchmark_writes_every_path_level_ratio_and_plot(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_serving", "--short", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())

    assert res["meta"]["short"] is True
    for path in ("raw", "app_gradio", "app_rest", "app_v1"):
        p = res["paths"][path]
        assert p["requests"] == 2 and len(p["samples"]) == 2, path
        assert all(s["tokens"] > 0 for s in p["samples"]), path
        assert all(s["ttft_ms"] >= 0 and s["latency_s"] > 0 for s in p["samples"]), path
        assert _positive_finite(p["decode_tok_s"]), path

    levels = res["concurrency"]
    assert [lv["clients"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["errors"] == [] and lv["completed"] == lv["requests"] >= lv["clients"]
        assert lv["output_tokens"] > 0
        assert _positive_finite(lv["aggregate_tok_s"])
        assert _positive_finite(lv["ttft_ms_p50"]) and _positive_finite(lv["ttft_ms_p99"])
        assert _positive_finite(lv["tpot_ms_p50"]) and _positive_finite(lv["tpot_ms_p99"])

    assert set(res["ratios"]) == {"app_gradio_tok_s_vs_raw", "app_rest_tok_s_vs_raw", "app_v1_tok_s_vs_raw"}
    assert all(_positive_finite(v) for v in res["ratios"].values()), res["ratios"]
    assert set(res["scaling"]) == {"1", "2"}
    assert all(_positive_finite(v) for v in res["scaling"].values()), res["scaling"]
    assert all(math.isfinite(v) for v in res["ttft_added_ms"].values())  # a difference: may be negative
    assert res["rss"]["peak_mib"] > 0

    png = Path(res["plot"])
    assert png.parent == tmp_path and png.is_file()
    assert png.read_bytes()[:8] == PNG_MAGIC

    assert "tok/s / raw" in proc.stdout and "TTFT added" in proc.stdout  # the printed table
