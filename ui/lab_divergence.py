"""Compare's token heatmap: each pane's reply with every token coloured by its KL divergence from the
reference on the same prefix, a hover card with both distributions' top tokens, and the first token
where the variant's greedy choice leaves the reference's marked (optimization/token_divergence.py)."""

from __future__ import annotations

import html

import gradio as gr

from optimization.lab import DEFAULT_REFERENCE, MAX_COMPARE, variant_menu
from optimization.token_divergence import compare_divergence
from serving.requests import as_text
from serving.services import Services
from ui.edge import cancellable, gradio_errors

KLD_FULL = 1.0  # a token at this KLD (nats) or more is coloured at full strength

HEAT_CSS = """
.heat { line-height: 1.9; font-size: 14px; }
.heat .tok { position: relative; border-radius: 3px; padding: 1px 0; cursor: default; }
.heat .tok.differs { border-bottom: 2px solid #1d4ed8; }
.heat .tok.first { outline: 2px solid #1d4ed8; outline-offset: 1px; }
.heat .first-mark { color: #1d4ed8; font-weight: 700; font-size: 11px; vertical-align: super; }
.heat .tip { display: none; position: absolute; z-index: 20; left: 0; top: 1.7em; min-width: 330px;
  background: #111827; color: #f9fafb; border-radius: 6px; padding: 6px 8px; font-size: 12px; line-height: 1.35;
  white-space: normal; box-shadow: 0 4px 14px rgba(0,0,0,.25); }
.heat .tok:hover .tip { display: block; }
.heat .tip table { border-collapse: collapse; width: 100%; }
.heat .tip td, .heat .tip th { padding: 1px 6px; text-align: left; color: #f9fafb; background: transparent;
  border: none; font-weight: normal; }
.heat .tip th { color: #9ca3af; }
.heat .scale { display: inline-block; width: 120px; height: 10px; vertical-align: middle;
  background: linear-gradient(to right, rgba(220,38,38,0.04), rgba(220,38,38,0.85)); border-radius: 2px; }
.heat .summary { font-size: 13px; margin-bottom: 6px; }
"""


def heat_colour(kld: float) -> str:
    """Transparent at 0, full red at KLD_FULL nats and beyond (square root: small KLDs stay visible)."""
    a = min(1.0, max(0.0, kld) / KLD_FULL) ** 0.5 * 0.85
    return f"rgba(220,38,38,{a:.3f})"


def _shown(text: str) -> str:
    """A token's text as it can be seen: spaces kept, line breaks as ↵ then a break."""
    return html.escape(text).replace("\n", "↵<br>") or "&#8203;"


def _tip(t: dict, variant: str, reference: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(repr(v[0]))} {v[1] * 100:.1f}%</td><td>{html.escape(repr(r[0]))} {r[1] * 100:.1f}%</td></tr>"
        for v, r in zip(t["variant_top"], t["reference_top"]))
    verdict = "same top-1" if t["same_top1"] else "top-1 differs"
    return (f'<span class="tip">KLD {t["kld"]:.4f} · {verdict}<table><tr><th>{html.escape(variant)}</th>'
            f"<th>{html.escape(reference)} (reference)</th></tr>{rows}</table></span>")


def heatmap_html(result: dict) -> str:
    """One pane's heatmap: a summary line, then the reply's tokens coloured by KLD, each with a hover card."""
    v, ref = result["variant"], result["reference"]
    tokens, first = result["tokens"], result["first_divergence"]
    if not tokens:
        return (f'<div class="heat"><div class="summary"><b>{html.escape(v)}</b> · no reply to score against '
                f"{html.escape(ref)}</div></div>")
    where = ("greedy choice never leaves the reference's" if first is None else
             f"greedy choice first leaves the reference's at token {first + 1} "
             f"(<b>{html.escape(repr(tokens[first]['text']))}</b>)")
    cut = (f" · first {result['scored']} of {result['reply_tokens']} tokens scored"
           if result["scored"] < result["reply_tokens"] else "")
    summary = (f'<div class="summary"><b>{html.escape(v)}</b> vs {html.escape(ref)} · KLD mean '
               f"{result['kld_mean']:.4f} · p99 {result['kld_p99']:.3f} · top-1 agree "
               f"{result['top1_agreement'] * 100:.1f}% · {where}{cut}<br>"
               f'<small>KLD 0 <span class="scale"></span> ≥{KLD_FULL:g} · underlined: top-1 differs · '
               f"hover a token for both distributions' top tokens</small></div>")
    spans = []
    for i, t in enumerate(tokens):
        cls = "tok" + ("" if t["same_top1"] else " differs") + (" first" if i == first else "")
        mark = '<span class="first-mark" title="first greedy divergence">▼</span>' if i == first else ""
        spans.append(f'{mark}<span class="{cls}" data-kld="{t["kld"]:.6f}" data-index="{i}" '
                     f'style="background:{heat_colour(t["kld"])}">{_shown(t["text"])}{_tip(t, v, ref)}</span>')
    return f'<div class="heat">{summary}<div class="tokens">{"".join(spans)}</div></div>'


def token_divergence(h: Services, prompt, panes, model, reference, cancel=None) -> list[dict]:
    """The checked arguments of /token_divergence and Compare's button, then the lab's scoring."""
    source = as_text(model, "model").strip() or "embedded"
    return compare_divergence(h.lab, source, as_text(prompt, "prompt"), panes,
                              as_text(reference, "reference").strip() or DEFAULT_REFERENCE, cancel=cancel)


def build_divergence(h: Services, last):
    """Under Compare's panes: a reference menu, a button, and one heatmap per pane of the last
    comparison (``last``: {prompt, model, panes} that Compare leaves in a State)."""
    with gr.Row():
        reference = gr.Dropdown(variant_menu(h.registry), value=DEFAULT_REFERENCE, label="Reference for token divergence",
                                scale=2, allow_custom_value=True)
        run = gr.Button("Token divergence", elem_id="divergence-run", scale=1)
    status = gr.Markdown(elem_id="divergence-status")
    with gr.Row():
        heat = [gr.HTML(elem_id=f"heat-{i}", visible=False, css_template=HEAT_CSS, padding=True, container=True)
                for i in range(MAX_COMPARE)]

    @gradio_errors
    async def divergence_ui(last, reference):
        if not last or not last.get("panes") or not all(p.get("done") for p in last["panes"]):
            raise gr.Error("Run a comparison first: the heatmap colours its replies.")
        results = await cancellable(lambda cancel: token_divergence(h, last["prompt"], last["panes"], last["model"],
                                                                    reference, cancel))
        shown = [gr.update(value=heatmap_html(results[i]), visible=True) if i < len(results)
                 else gr.update(value="", visible=False) for i in range(MAX_COMPARE)]
        return ["Each reply token coloured by its KL divergence from the reference on the same prefix.", *shown]

    run.click(divergence_ui, [last, reference], [status, *heat], api_visibility="private", concurrency_id="lab")
