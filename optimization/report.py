"""The report card: one Markdown document per evaluated variant, ready to paste into a Hugging Face
model card. Every figure is Evaluate's own row as the lab stored it (optimization/measurements.py),
printed with Evaluate's decimals, never recomputed: provenance (source, its type, importance matrix),
tensor mix and bits per weight, KLD mean/p99, top-1 agreement, PPL, memory (weights, KV, overhead),
decode speed, KV-cache type, how it was measured (reference, text, tokens, scoring) and on what
machine, the other variants measured beside it, the Evaluate plot (an image file the caller writes
next to the document) and the blind arena's results when the lab has any.

The arena's results come in through ``arena`` (a list of {opponent, wins, losses, ties, both_bad,
win_rate, ci_low, ci_high}); this module only lays them out.
"""

from __future__ import annotations

import json

from backends.errors import InvalidRequest
from optimization import measurements

# (label, row field, decimals): the same decimals as Evaluate's table
FIGURES = [("KLD mean vs reference", "kld_mean", 4), ("KLD p99", "kld_p99", 3), ("Top-1 agreement %", "top1_pct", 1),
           ("Perplexity", "ppl", 2), ("Memory MiB (total)", "footprint_mib", 1), ("Decode tok/s", "decode_tokens_per_s", 1),
           ("Bits per weight", "bpw", 2), ("Tokens scored", "tokens", None)]


def _fmt(v, d):
    if v is None:
        return "—"
    return f"{v:,.{d}f}" if d is not None else f"{v:,}"


def figures(row: dict) -> dict:
    """Evaluate's row's figures by label, formatted as Evaluate's table shows them."""
    r = dict(row, top1_pct=row["top1_agreement"] * 100)
    return {label: _fmt(r.get(f), d) for label, f, d in FIGURES}


def evaluated_variants(cache_dir, source: str) -> list[str]:
    return sorted(measurements.of_source(cache_dir, source))


def report_card(cache_dir, source: str, variant: str, plot_file: str | None = None,
                arena: list[dict] | None = None) -> str:
    """The Markdown report card of ``variant`` of ``source``, as last evaluated. ``plot_file``: the
    Evaluate plot's file name (or data URI) to show; ``arena``: the blind arena's results."""
    measured = measurements.of_source(cache_dir, source)
    if variant not in measured:
        known = ", ".join(sorted(measured)) or "none yet"
        raise InvalidRequest(f"{variant!r} of {source!r} has not been evaluated (evaluated: {known}). Run Evaluate "
                             "first.", "variant")
    rec = measured[variant]
    row = rec["row"]
    mem = row.get("memory") or {}
    quant = row.get("quantization") or variant.split(":", 1)[-1]
    kv = mem.get("kv_type") or "f16"
    imatrix = "+imatrix" in variant or "+imatrix" in quant
    title = f"{row.get('source') or source} · {quant}" + (f" · KV {kv}" if kv != "f16" else "")
    lines = [f"# {title}", "",
             f"Quantized with QuantLab ({row['backend']}). Figures measured against **{rec['reference']}** "
             f"on {rec['text']} ({row['tokens']:,} tokens, window {rec['window']}, scoring \"{rec['scoring']}\").", "",
             "## Provenance", "",
             f"- Source: {row.get('source') or source}" + (f" ({row['source_type']})" if row.get("source_type") else ""),
             f"- {row.get('note') or 'provenance not recorded'}",
             f"- Tensor mix: {row.get('tensors') or '—'}",
             f"- Importance matrix: {'yes' if imatrix else 'no'}"]
    if row.get("warning"):
        lines.append(f"- ⚠ {row['warning']}")
    lines += ["", "## Quality and cost", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in figures(row).items()]
    if mem:
        lines.append(f"| Memory breakdown MiB | {mem.get('weights_mib')} weights + {mem.get('kv_mib')} KV "
                     f"({mem.get('n_ctx')} ctx x {mem.get('slots')} slot) + {mem.get('overhead_mib')} overhead |")
    lines += [f"| KV cache type | {kv} |", f"| Importance matrix | {'yes' if imatrix else 'no'} |"]
    others = [r["row"] for k, r in sorted(measured.items(), key=lambda kv_: kv_[1]["row"]["kld_mean"])
              if r.get("reference") == rec["reference"]]
    if len(others) > 1:
        lines += ["", "## Beside the other variants measured against the same reference", "",
                  "| variant | bpw | KLD mean | KLD p99 | top-1 % | PPL | memory MiB | tok/s |", "|---|---|---|---|---|---|---|---|"]
        for o in others:
            f = figures(o)
            name = f"**{o['variant']}**" if o["variant"] == variant else o["variant"]
            lines.append(f"| {name}{' (reference)' if o.get('is_reference') else ''} | {f['Bits per weight']} | "
                         f"{f['KLD mean vs reference']} | {f['KLD p99']} | {f['Top-1 agreement %']} | {f['Perplexity']} | "
                         f"{f['Memory MiB (total)']} | {f['Decode tok/s']} |")
    if plot_file:
        lines += ["", "## Quality vs memory", "", f"![KLD vs memory of the variants measured]({plot_file})"]
    if arena:
        lines += ["", "## Blind arena", "", "| against | wins | losses | ties | both bad | win rate (95% CI) |",
                  "|---|---|---|---|---|---|"]
        for a in arena:
            lines.append(f"| {a.get('opponent')} | {a.get('wins', 0)} | {a.get('losses', 0)} | {a.get('ties', 0)} | "
                         f"{a.get('both_bad', 0)} | {a.get('win_rate', 0) * 100:.0f}% "
                         f"({a.get('ci_low', 0) * 100:.0f}–{a.get('ci_high', 0) * 100:.0f}%) |")
    lines += ["", "## Measured on", "", f"- {measurements.machine_line(rec.get('machine') or {})}",
              f"- {rec.get('measured_at', '')}", "",
              "<details><summary>Evaluate's row (JSON)</summary>", "", "```json",
              json.dumps({k: v for k, v in row.items()}, indent=1), "```", "", "</details>", ""]
    return "\n".join(lines)
