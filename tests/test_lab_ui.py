"""How Compare panes and the Evaluate table read (UI logic, no model): finish reasons in words,
word-by-word differences against the first pane, human column names, the reference row, the
quality-vs-memory frontier and a labelled plot."""

from __future__ import annotations

from ui.lab import (TABLE_COLUMNS, frontier, pane_markdown, provenance_markdown, quality_plot, table_rows,
                    word_diff_html)

MEM = {"total_mib": 229.4, "weights_mib": 136.4, "kv_mib": 45.0, "overhead_mib": 48.0, "n_ctx": 2048, "slots": 1}


def row(variant, kld, mib, ref=False, backend="llamacpp"):
    return {"variant": variant, "backend": backend, "is_reference": ref, "bpw": 8.51, "kld_mean": kld,
            "kld_p99": kld * 10, "top1_agreement": 1 - kld, "ppl": 12.3456, "footprint_mib": mib,
            "decode_tokens_per_s": 101.26, "eval_tokens_per_s": 812.7, "tokens": 254,
            "tensors": f"{variant}: 211 q8_0", "note": "from Q4_1: already quantized", "warning": None}


def test_only_the_words_that_differ_from_the_first_pane_are_marked():
    html = word_diff_html("The sky is blue today.", "The sky is grey today.")
    assert html == "The sky is <mark>grey</mark> today."
    assert "<mark>" not in word_diff_html("same words", "same words")
    assert word_diff_html("a", "a <b>") == "a <mark>&lt;b&gt;</mark>"
    # a lone matching word between two changed stretches is not shown as agreement
    assert word_diff_html("one two three four five", "six seven three eight nine") == \
        "<mark>six seven three eight nine</mark>"


def test_a_pane_says_why_it_stopped_with_its_memory_and_provenance():
    state = {"variant": "llamacpp:Q8_0", "text": "Hi there", "done": True, "finish_reason": "length",
             "stats": {"ttft_s": 0.05, "tokens_per_s": 90.0, "completion_tokens": 2, "finish_reason": "length"},
             "memory": MEM, "provenance": {"tensors": "Q8_0: 211 q8_0", "note": "from Q4_1: already quantized",
                                           "warning": "Q8_0 has more bits"}}
    md = pane_markdown(state, base="Hi you")
    assert "stopped at the token limit" in md and "229.4 MiB" in md and "already quantized" in md
    assert "⚠ Q8_0 has more bits" in md and "Hi <mark>there</mark>" in md
    assert "streaming" in pane_markdown(dict(state, done=False, finish_reason=None, stats={}))
    assert "finished (end of text)" in pane_markdown(dict(state, finish_reason="stop"))


def test_the_table_has_human_columns_and_the_reference_row():
    df = table_rows([row("llamacpp:F16", 0.0, 300.0, ref=True), row("llamacpp:Q8_0", 0.004123456, 229.43)])
    assert list(df.columns) == TABLE_COLUMNS
    assert {"KLD mean", "PPL", "top-1 agree %", "memory MiB", "decode tok/s"} <= set(df.columns)
    ref, q8 = df.iloc[0], df.iloc[1]
    assert ref["variant"] == "llamacpp:F16 (reference)" and q8["variant"] == "llamacpp:Q8_0"
    assert q8["KLD mean"] == 0.0041 and q8["top-1 agree %"] == 99.6 and q8["memory MiB"] == 229.4
    assert q8["PPL"] == 12.35 and q8["decode tok/s"] == 101.3


def test_provenance_is_listed_per_variant_with_its_warning():
    rows = [row("llamacpp:F16", 0.0, 300.0, ref=True), dict(row("llamacpp:Q8_0", 0.004, 229.4), warning="more bits")]
    md = provenance_markdown(rows)
    assert "**llamacpp:F16** (reference): llamacpp:F16: 211 q8_0 · from Q4_1: already quantized" in md
    assert md.count("⚠") == 1 and "⚠ more bits" in md


def test_the_frontier_keeps_only_variants_nothing_smaller_beats():
    rows = [row("F16", 0.0, 300), row("Q8_0", 0.004, 230), row("Q6_K", 0.02, 200), row("Q5_0", 0.01, 210),
            row("Q2_K", 0.4, 120), row("bad", 0.5, 250)]
    assert [r["variant"] for r in frontier(rows)] == ["Q2_K", "Q6_K", "Q5_0", "Q8_0", "F16"]


def test_the_plot_labels_every_point_and_pads_its_axes():
    rows = [row("llamacpp:F16", 0.0, 300.0, ref=True), row("llamacpp:Q8_0", 0.004, 229.4),
            row("llamacpp:Q2_K", 0.45, 120.0)]
    fig = quality_plot(rows)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["llamacpp:F16 (reference)", "llamacpp:Q8_0", "llamacpp:Q2_K"]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < 120 and x1 > 300 and y0 < 0 and y1 > 0.45
    assert any("frontier" in (line.get_label() or "") for line in ax.get_lines())
