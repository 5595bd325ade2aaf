"""The Arena tab: a blind test of two contenders. Both answer the same prompt; the replies are shown as
A and B in random order, the vote (A, B, tie, both bad) reveals which was which with its memory,
tok/s and KLD, and the results per pair (win rate with its 95 % Wilson interval) are kept across
restarts and export as CSV or JSON (serving/arena.py, optimization/arena.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from optimization.arena import results_csv
from optimization.lab import variant_menu
from serving import arena
from serving.services import Services
from ui.edge import cancellable, gradio_errors

VOTE_BUTTONS = (("A is better", "A"), ("B is better", "B"), ("Tie", "tie"), ("Both are bad", "both bad"))
RESULT_COLUMNS = [("contender 1", "model_a", None), ("contender 2", "model_b", None), ("votes", "votes", None),
                  ("1 wins", "a_wins", None), ("2 wins", "b_wins", None), ("ties", "ties", None),
                  ("both bad", "both_bad", None), ("1's win rate %", "a_win_rate_pct", 1),
                  ("95% CI %", "ci", None), ("KLD 1", "a_kld", 4), ("KLD 2", "b_kld", 4),
                  ("MiB 1", "a_memory_mib", 1), ("MiB 2", "b_memory_mib", 1),
                  ("tok/s 1", "a_tokens_per_s", 1), ("tok/s 2", "b_tokens_per_s", 1)]
NO_ROUND = "Play a round: two contenders answer your prompt, shown as A and B in random order."


def results_table(rows: list[dict]) -> pd.DataFrame:
    """The results as the tab shows them: win rate of contender 1 over decisive votes, its interval."""
    out = []
    for r in rows:
        pct = None if r["a_win_rate"] is None else r["a_win_rate"] * 100
        ci = "-" if r["ci_low"] is None else f"{r['ci_low'] * 100:.0f}–{r['ci_high'] * 100:.0f}"
        r = dict(r, a_win_rate_pct=pct, ci=ci)
        out.append([round(r[f], d) if d is not None and r.get(f) is not None else r.get(f) for _, f, d in RESULT_COLUMNS])
    return pd.DataFrame(out, columns=[c for c, _, _ in RESULT_COLUMNS])


def pane(side: str, text: str, finish_reason: str | None = None) -> str:
    cut = " · *stopped at the token limit*" if finish_reason == "length" else ""
    return f"### {side}{cut}\n\n" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _figures(f: dict) -> str:
    parts = []
    if f.get("memory_mib") is not None:
        parts.append(f"{f['memory_mib']:,.1f} MiB")
    if f.get("tokens_per_s"):
        parts.append(f"{f['tokens_per_s']:.1f} tok/s")
    if f.get("kld_mean") is not None:
        parts.append(f"KLD {f['kld_mean']:.4f} vs {f.get('kld_reference')}")
    return " · ".join(parts)


def reveal_markdown(r: dict) -> str:
    verdict = {"tie": "a tie", "both bad": "both bad"}.get(r["vote"], f"**{r['winner']}** wins")
    lines = [f"You voted **{r['vote']}**: {verdict}."]
    for side in ("A", "B"):
        lines.append(f"- **{side}** was **{r[side]['name']}** · {_figures(r[side]['figures'])}")
    row = r["results"]
    if row["a_win_rate"] is not None:
        lines.append(f"\n{row['model_a']} wins {row['a_win_rate'] * 100:.0f}% of {row['a_wins'] + row['b_wins']} "
                     f"decisive votes against {row['model_b']} (95% CI {row['ci_low'] * 100:.0f}–"
                     f"{row['ci_high'] * 100:.0f}%).")
    return "\n".join(lines)


def export_files(rows: list[dict]) -> tuple[str, str]:
    out = Path(tempfile.mkdtemp(prefix="quantlab-arena-"))
    (out / "arena.csv").write_text(results_csv(rows))
    (out / "arena.json").write_text(json.dumps(rows, indent=2))
    return str(out / "arena.csv"), str(out / "arena.json")


def build_arena(h: Services):
    """The tab's layout and wiring; returns (refresh function, its outputs) for the tab's select."""
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=3, scale=4, value="Write a haiku about the sea.")
        with gr.Column(scale=2):
            contenders = gr.Dropdown(variant_menu(h.registry), value=["llamacpp:Q8_0", "llamacpp:Q2_K"],
                                     multiselect=True, allow_custom_value=True, label="Contenders",
                                     info='Two (or more: each round draws two). Another model: "MODEL | backend:quant".')
            model = gr.Textbox(value="embedded", label="Model source")
    with gr.Row():
        max_new = gr.Slider(1, 512, value=96, step=1, label="Max new tokens")
        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (same seed for both)")
        reference = gr.Dropdown(["", *variant_menu(h.registry)], value="", allow_custom_value=True,
                                label="Reference for KLD (optional)", info="shown after the vote")
    play = gr.Button("Play a round", variant="primary", elem_id="arena-play")
    status = gr.Markdown(NO_ROUND, elem_id="arena-status")
    with gr.Row():
        panes = [gr.Markdown(elem_id=f"arena-{s.lower()}", container=True) for s in ("A", "B")]
    with gr.Row():
        buttons = [gr.Button(label, interactive=False, elem_id=f"arena-vote-{code.replace(' ', '-')}")
                   for label, code in VOTE_BUTTONS]
    reveal = gr.Markdown(elem_id="arena-reveal")
    table = gr.Dataframe(headers=[c for c, _, _ in RESULT_COLUMNS], label="Results per pair (kept across restarts)",
                         interactive=False, elem_id="arena-results")
    with gr.Row():
        csv_out = gr.File(label="CSV")
        json_out = gr.File(label="JSON")
    round_id = gr.State("")  # kept on the server: the page never holds the names

    @gradio_errors
    async def play_ui(prompt, contenders, model, max_new, temperature, reference):
        r = await cancellable(lambda cancel: arena.play_round(h, prompt, contenders, model, max_new, temperature,
                                                              -1, reference, cancel=cancel))
        return (r["round"], "Which reply is better? Vote to see which was which.",
                pane("A", r["A"]["text"], r["A"]["finish_reason"]), pane("B", r["B"]["text"], r["B"]["finish_reason"]),
                "", *[gr.update(interactive=True)] * len(buttons))

    def vote_ui(code):
        @gradio_errors
        def handler(rid):
            if not rid:
                raise gr.Error("Play a round first.")
            r = arena.vote(h, rid, code)
            rows = arena.results(h)
            named = [pane(f"{side} · {r[side]['name']}", r[side]["text"], r[side]["finish_reason"]) for side in ("A", "B")]
            return ("", NO_ROUND, *named, reveal_markdown(r), results_table(rows), *export_files(rows),
                    *[gr.update(interactive=False)] * len(buttons))
        return handler

    ev = play.click(play_ui, [prompt, contenders, model, max_new, temperature, reference],
                    [round_id, status, *panes, reveal, *buttons], api_visibility="private", concurrency_id="lab")
    for button, (_, code) in zip(buttons, VOTE_BUTTONS):
        button.click(vote_ui(code), round_id, [round_id, status, *panes, reveal, table, csv_out, json_out, *buttons],
                     api_visibility="private")

    def refresh():
        rows = arena.results(h)
        return (results_table(rows), *export_files(rows)) if rows else (results_table(rows), None, None)

    return ev, refresh, [table, csv_out, json_out]
