"""``--fit BUDGET`` on the command line: the fit advisor's table for --model at --n-ctx x --parallel,
printed before the server starts, and the settings changed to serve the recommended pair (its GGUF
weight type as --quantization, its KV cache type as --cache-type). ``--fit-only`` prints and exits."""

from __future__ import annotations

import sys

from backends.errors import BackendError
from optimization import fit


def apply_fit(settings, out=sys.stdout, monitor=None):
    """(settings to serve with, exit code or None): None = go on serving; 0/2 = exit now."""
    if monitor is None:
        from types import SimpleNamespace

        from monitoring.memory import GpuProbe

        monitor = SimpleNamespace(gpu=GpuProbe())  # each GPU's free memory, when there are GPUs
    try:
        path = fit.source_path(settings.model, settings.models_dir if settings.exposed else None)
        budget = fit.parse_budget(settings.fit)
        if budget is None:
            budget, where = fit.machine_budget(monitor, on_gpu=bool(settings.n_gpu_layers))
        else:
            where = f"{budget / 2**20:,.0f} MiB budget"
        rows = fit.advise(path, settings.model, settings.cache_dir, budget, settings.n_ctx, settings.parallel)
    except BackendError as exc:
        print(f"--fit: {exc}", file=sys.stderr)
        return settings, 2
    print(f"Fit advice for {settings.model} at {settings.n_ctx} ctx x {settings.parallel} slot(s)", file=out)
    print(fit.table_text(rows, where), file=out)
    best = next((r for r in rows if r.recommended), None)
    if settings.fit_only:
        return settings, 0 if best else 2
    if best is None:
        print("--fit: nothing fits the budget; not loading a model.", file=sys.stderr)
        return settings.model_copy(update={"no_model": True}), None
    return settings.model_copy(update={"backend": "llamacpp", "quantization": best.weights,
                                       "cache_type": None if best.kv == "f16" else best.kv}), None
