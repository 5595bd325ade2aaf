"""The lab's newer operations, primitives in and out, as the UI and the Gradio API call them: the
importance matrix (compute, measure its gain), the fit advisor and the report card. They take the
``Services`` the app wires (its lab, manager, monitor and load path) and add nothing to it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from backends.errors import InvalidRequest
from optimization import fit, imatrix, measurements, report
from optimization.arena import standing
from serving.requests import as_int, as_text

GAIN_TOKENS = 1024
GAIN_WINDOW = 256


class LabTools:
    def __init__(self, services):
        self.h = services

    @property
    def cache_dir(self):
        return self.h._cache_dir()

    # --- importance matrix -----------------------------------------------------------------------

    def imatrix_compute(self, model: Any = "embedded", calibration: Any = None, progress=lambda f, m: None,
                        cancel: threading.Event | None = None) -> dict:
        model = as_text(model, "model").strip() or "embedded"
        calibration = as_text(calibration, "calibration").strip() or None
        return imatrix.compute(self.h.lab, model, calibration, progress=progress, cancel=cancel)

    def imatrix_gain(self, model: Any = "embedded", types: Any = None, text_path: Any = None,
                     max_tokens: Any = GAIN_TOKENS, window: Any = GAIN_WINDOW, progress=lambda f, m: None,
                     cancel: threading.Event | None = None) -> dict:
        """Evaluate each type with and without the importance matrix against the F16 on held-out text:
        {"rows": Evaluate's rows, "gain": per type, "imatrix": the matrix's record}."""
        model = as_text(model, "model").strip() or "embedded"
        text_path = as_text(text_path, "text_path").strip() or None
        variants = imatrix.imatrix_variants(types)
        imatrix.check_held_out(self.h.lab, model, text_path)
        rows = self.h.evaluate(variants, text_path, max_tokens, model, imatrix.IMATRIX_REFERENCE, window, "all",
                               progress=progress, cancel=cancel)
        return {"rows": rows, "gain": imatrix.gain(rows), "imatrix": imatrix.current(self.h.lab, model)}

    # --- fit advisor -----------------------------------------------------------------------------

    def fit(self, budget: Any = "auto", n_ctx: Any = 4096, slots: Any = 1, model: Any = "embedded") -> dict:
        """{"budget_mib", "where", "rows": [...], "recommended": row or None, "text": the table as text}."""
        model = as_text(model, "model").strip() or "embedded"
        path = fit.source_path(model, self.h.manager.allowed_dir)
        budget_bytes = fit.parse_budget(budget)
        if budget_bytes is None:
            spec = self.h.base_spec
            on_gpu = spec is not None and spec.n_gpu_layers not in (0,)
            budget_bytes, where = fit.machine_budget(self.h.monitor, on_gpu=on_gpu)
        else:
            where = f"{budget_bytes / 2**20:,.0f} MiB budget"
        rows = fit.advise(path, model, self.cache_dir, budget_bytes, as_int(n_ctx, "n_ctx"), as_int(slots, "slots"))
        best = next((r for r in rows if r.recommended), None)
        return {"budget_mib": round(budget_bytes / 2**20, 1), "where": where, "n_ctx": int(n_ctx), "slots": int(slots),
                "rows": [r.as_dict() for r in rows], "recommended": best.as_dict() if best else None,
                "text": fit.table_text(rows, where)}

    def load_pick(self, model: Any, weights: str, kv: str, n_ctx: Any, slots: Any):
        """Load a pair for the chat (the load path every load takes: its memory check, progress)."""
        if not weights:
            raise InvalidRequest("Nothing to load: no pair fits the budget.", "weights")
        yield from self.h.load_steps(as_text(model, "model").strip() or "embedded", "llamacpp", weights,
                                     cache_type=kv, n_ctx=as_int(n_ctx, "n_ctx"), parallel=as_int(slots, "slots"))

    # --- report card -----------------------------------------------------------------------------

    def evaluated(self, model: Any = "embedded") -> list[str]:
        return report.evaluated_variants(self.cache_dir, as_text(model, "model").strip() or "embedded")

    def report(self, model: Any, variant: Any, plot_file: str | None = None, arena: list[dict] | None = None) -> str:
        """``arena``: the blind arena's rows for it (None = read from the arena's votes, where the variant
        is named by its label, or "model | label" when it competed as another model's)."""
        model = as_text(model, "model").strip() or "embedded"
        variant = as_text(variant, "variant").strip()
        if arena is None:
            arena = standing(self.cache_dir, {variant, f"{Path(model).name or model} | {variant}"})
        return report.report_card(self.cache_dir, model, variant, plot_file=plot_file, arena=arena)

    def rows_of(self, model: Any, reference: str | None = None) -> list[dict]:
        """The stored Evaluate rows of ``model`` (those against ``reference`` when given), for the plot."""
        m = measurements.of_source(self.cache_dir, as_text(model, "model").strip() or "embedded")
        return [r["row"] for r in m.values() if reference is None or r.get("reference") == reference]

    def reference_of(self, model: Any, variant: str) -> str | None:
        rec = measurements.of_source(self.cache_dir, as_text(model, "model").strip() or "embedded").get(variant)
        return rec.get("reference") if rec else None
