"""The fit advisor and the report card on the live app (real gradio_client, real engine): the report
card's figures are /evaluate's, and the advisor's recommendation, loaded, takes no more than the
budget and what it predicted within its stated tolerance."""

from __future__ import annotations

import json
import re

import pytest

from backends.base import ModelSpec
from monitoring.model_memory import model_memory
from optimization import report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(client):
    return client.predict(["llamacpp:Q8_0", "llamacpp:Q4_0+kv:q8_0"], "", 128, "embedded", "llamacpp:F16", 128, "all",
                          api_name="/evaluate")


def test_the_report_cards_numbers_equal_evaluates(client, evaluated):
    for row in evaluated:
        md = client.predict(row["variant"], "embedded", False, api_name="/report")
        as_json = json.loads(re.search(r"```json\n(.*?)\n```", md, re.S).group(1))
        assert as_json == row  # the very row /evaluate returned
        for label, value in report.figures(row).items():
            assert f"| {label} | {value} |" in md
        # Evaluate's table's decimals (ui/lab.py EVAL_COLUMNS), written out
        for line in (f"| KLD mean vs reference | {row['kld_mean']:.4f} |", f"| KLD p99 | {row['kld_p99']:.3f} |",
                     f"| Top-1 agreement % | {row['top1_agreement'] * 100:.1f} |", f"| Perplexity | {row['ppl']:.2f} |",
                     f"| Memory MiB (total) | {row['footprint_mib']:,.1f} |", f"| Bits per weight | {row['bpw']:.2f} |",
                     f"| Decode tok/s | {row['decode_tokens_per_s']:,.1f} |"):
            assert line in md
        assert f"KV cache type | {row['memory']['kv_type']} |" in md
        assert "![KLD vs memory of the variants measured](evaluate.png)" in md
    embedded = client.predict(evaluated[1]["variant"], "embedded", True, api_name="/report")
    assert "(data:image/png;base64," in embedded


def test_a_report_of_a_variant_never_evaluated_is_a_clear_error(client, evaluated):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="has not been evaluated"):
        client.predict("llamacpp:IQ4_XS", "embedded", True, api_name="/report")


@pytest.mark.parametrize("budget_mib,n_ctx,slots", [(300, 2048, 1), (200, 1024, 2)])
def test_the_recommendation_fits_the_budget_and_its_prediction_holds(client, evaluated, live_app, budget_mib, n_ctx,
                                                                     slots):
    advice = client.predict(str(budget_mib), n_ctx, slots, "embedded", api_name="/fit")
    best = advice["recommended"]
    assert best is not None and best["fits"] and best["measured"], advice["text"]
    assert all(r["predicted_mib"] * (1 + r["tolerance_pct"] / 100) <= budget_mib + 0.1 for r in advice["rows"] if r["fits"])
    spec = ModelSpec(source="embedded", backend="llamacpp", quantization=best["weights"], n_ctx=n_ctx, parallel=slots,
                     cache_type=None if best["kv"] == "f16" else best["kv"])
    lease = live_app.manager.open_variant(spec)  # loaded as /load_model would, beside the chat's model
    try:
        loaded = model_memory(lease.info)
    finally:
        lease.close()
    print(f"{budget_mib} MiB, {n_ctx} x {slots}: {best['variant']} predicted {best['predicted_mib']} MiB, "
          f"loaded {loaded['total_mib']} MiB")
    assert loaded["total_bytes"] <= budget_mib * 2**20
    assert abs(best["predicted_mib"] - loaded["total_mib"]) <= best["tolerance_pct"] / 100 * loaded["total_mib"]
