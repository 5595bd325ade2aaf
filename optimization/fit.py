"""The fit advisor: which GGUF weight type x KV-cache type pairs of a model fit a memory budget at a
context length and a number of parallel slots, how much memory each is predicted to take, and how
good and fast each is where the lab has MEASURED it (optimization/measurements.py: Evaluate's own
rows; never a guess presented as a measurement). The best pair that fits is the recommendation.

Predicted memory = weights + KV cache + overhead, the same three parts as a loaded model's memory
(monitoring/model_memory.py). The weights come from the best source there is, and the stated
tolerance follows it:
- "measured": the engine's weight bytes from an Evaluate of that weight type (exact);
- "file": the variant's GGUF is already made: its tensor bytes from the header (exact);
- "bpw": neither: the source's size scaled by the type's typical bits per weight (a K-quant can fall
  back to other types on a model whose rows are no multiple of 256, hence the wide tolerance).
The KV cache is llama.cpp's allocation (n_ctx x slots cells, rounded up to 256) of the KV type.
A pair is listed as fitting only when its prediction plus its tolerance is within the budget, so the
recommendation never needs more than the budget even at the edge of its tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from backends.base import KV_CACHE_TYPES
from backends.errors import InvalidRequest
from backends.files import gguf, imatrix_file, sources
from monitoring.model_memory import OVERHEAD_BYTES
from optimization import measurements
from optimization.estimates import BITS_PER_WEIGHT

WEIGHT_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
TOLERANCE = {"measured": 0.05, "file": 0.05, "bpw": 0.40}  # |predicted - loaded| / loaded, stated per basis
KV_CELL_ROUND = 256  # llama.cpp pads the context (KV cells) up to a multiple of 256
OVERHEAD = OVERHEAD_BYTES["llamacpp"]
MAX_CTX = 1 << 20
MAX_SLOTS = 64


@dataclass
class FitRow:
    weights: str  # GGUF type, e.g. "Q4_K_M" or "Q4_K_M+imatrix"
    kv: str  # KV cache type
    variant: str  # the lab's label, "llamacpp:Q4_K_M+kv:q8_0"
    predicted_mib: float
    weights_mib: float
    kv_mib: float
    overhead_mib: float
    basis: str  # "measured" | "file" | "bpw"
    tolerance_pct: float
    fits: bool
    kld_mean: float | None = None  # measured by Evaluate (None: not measured yet)
    kld_p99: float | None = None
    top1_agreement: float | None = None
    decode_tokens_per_s: float | None = None
    measured_reference: str | None = None
    recommended: bool = False

    @property
    def measured(self) -> bool:
        return self.kld_mean is not None

    def as_dict(self) -> dict:
        return {**asdict(self), "measured": self.measured}


def variant_label(weights: str, kv: str) -> str:
    return f"llamacpp:{weights}" + ("" if kv == "f16" else f"+kv:{kv}")


def parse_budget(budget) -> int | None:
    """Bytes from "4096" / "4096MiB" / "6GiB" / 4096 (MiB); None for "" / "auto" / "machine" / 0 (this machine)."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        mib = float(budget)
    else:
        text = str(budget).strip().lower().replace(" ", "")
        if text in ("", "auto", "machine", "this-machine", "thismachine", "0"):
            return None
        scale = 1.0
        for suffix, s in (("gib", 1024.0), ("gb", 1024.0), ("g", 1024.0), ("mib", 1.0), ("mb", 1.0), ("m", 1.0)):
            if text.endswith(suffix):
                text, scale = text[: -len(suffix)], s
                break
        try:
            mib = float(text) * scale
        except ValueError:
            raise InvalidRequest(f"budget {budget!r}: write MiB (4096), a size (6GiB) or \"auto\" for this "
                                 "machine's free memory.", "budget") from None
    if mib <= 0:
        return None
    if mib > 1 << 30:
        raise InvalidRequest(f"budget {budget!r} is implausibly large.", "budget")
    return int(mib * 2**20)


def machine_budget(monitor=None, on_gpu: bool = False) -> tuple[int, str]:
    """(usable bytes, where) on this machine: 90% of the free memory of every GPU together when the
    model goes to the GPU (llama.cpp splits the layers across them), else of the available RAM."""
    import psutil

    if on_gpu and monitor is not None and monitor.gpu.available:
        devs = [d for d in monitor.gpu.devices() if "total_bytes" in d]
        if devs:
            free = [d["total_bytes"] - d["used_bytes"] for d in devs]
            each = ", ".join(f"GPU {d['index']} {d.get('name', '')}: {f / 2**20:,.0f} MiB free" for d, f in zip(devs, free))
            return int(sum(free) * 0.9), f"90% of the free GPU memory ({each})"
    free = int(psutil.virtual_memory().available)
    gpu = "" if monitor is None or not monitor.gpu.available else " (the model runs on the CPU here)"
    return int(free * 0.9), f"90% of the available RAM ({free / 2**20:,.0f} MiB){gpu}"


def _round_cells(cells: int) -> int:
    return (cells + KV_CELL_ROUND - 1) // KV_CELL_ROUND * KV_CELL_ROUND


def _variant_file(src: Path, quant: str, cache_dir: Path) -> Path | None:
    """The variant's GGUF when it is already made (no quantization happens here)."""
    base, with_imatrix = imatrix_file.split_quant(quant)
    own = gguf.gguf_file_type(src)
    if own == quant:
        return src
    folder = gguf.variants_folder(src, cache_dir)
    stem = gguf.variant_stem(src)
    if with_imatrix:
        current = imatrix_file.current(folder)
        path = folder / f"{stem}.{base}.imatrix-{imatrix_file.file_sha(current)}.gguf" if current else None
    else:
        path = folder / f"{stem}.{quant}.gguf"
    return path if path is not None and path.is_file() else None


def advise(source_path: Path, source: str, cache_dir: Path, budget_bytes: int, n_ctx: int = 4096, slots: int = 1,
           weight_types=None, kv_types=None) -> list[FitRow]:
    """Every weight x KV pair of ``source_path`` (a GGUF), predicted and (where measured) scored,
    sorted by quality: measured pairs by KLD, then the others by bits per weight and KV precision.
    The first pair that fits and was measured (else the first that fits) is ``recommended``."""
    n_ctx, slots = int(n_ctx), int(slots)
    if not 16 <= n_ctx <= MAX_CTX:
        raise InvalidRequest(f"n_ctx must be between 16 and {MAX_CTX:,}.", "n_ctx")
    if not 1 <= slots <= MAX_SLOTS:
        raise InvalidRequest(f"slots must be between 1 and {MAX_SLOTS}.", "slots")
    measured = measurements.of_source(cache_dir, source)
    types = list(weight_types or WEIGHT_TYPES)
    types += [v.split(":", 1)[1].split("+kv:")[0] for v in measured if v.startswith("llamacpp:")]
    types = [t for t in dict.fromkeys(types) if imatrix_file.split_quant(t)[0] in gguf.GGUF_FTYPES]
    kvs = [k for k in (kv_types or KV_CACHE_TYPES) if k in gguf.KV_BYTES_PER_ELEMENT]
    meta = gguf.read_gguf_metadata(source_path)
    own = gguf.gguf_file_type(source_path)
    size = source_path.stat().st_size
    cells = _round_cells(n_ctx * slots)
    rows = []
    for w in types:
        base = imatrix_file.split_quant(w)[0]
        weights, basis = _measured_weights(measured, w), "measured"
        if weights is None:
            path = _variant_file(source_path, w, cache_dir)
            weights, basis = (gguf.tensor_summary(path)["tensor_bytes"], "file") if path else (None, "bpw")
        if weights is None:
            scale = BITS_PER_WEIGHT.get(base, 8.5) / BITS_PER_WEIGHT.get(own or "", BITS_PER_WEIGHT.get(base, 8.5))
            weights = int(size * scale)
        for k in kvs:
            kv = gguf.kv_cache_bytes(meta, cells, k)
            total = weights + kv + OVERHEAD
            tol = TOLERANCE[basis]
            r = FitRow(weights=w, kv=k, variant=variant_label(w, k), predicted_mib=_mib(total),
                       weights_mib=_mib(weights), kv_mib=_mib(kv), overhead_mib=_mib(OVERHEAD), basis=basis,
                       tolerance_pct=tol * 100, fits=total * (1 + tol) <= budget_bytes)
            rec = measured.get(r.variant)
            if rec:
                row = rec["row"]
                r.kld_mean, r.kld_p99, r.top1_agreement = row["kld_mean"], row["kld_p99"], row["top1_agreement"]
                r.decode_tokens_per_s, r.measured_reference = row.get("decode_tokens_per_s"), rec.get("reference")
            rows.append(r)
    kv_rank = {k: i for i, k in enumerate(KV_CACHE_TYPES)}
    rows.sort(key=lambda r: (not r.measured, r.kld_mean if r.measured else 0.0,
                             -BITS_PER_WEIGHT.get(imatrix_file.split_quant(r.weights)[0], 0),
                             not r.weights.endswith(imatrix_file.IMATRIX_MARK), kv_rank.get(r.kv, 9)))
    best = next((r for r in rows if r.fits and r.measured), None) or next((r for r in rows if r.fits), None)
    if best is not None:
        best.recommended = True
    return rows


def _measured_weights(measured: dict, weights: str) -> int | None:
    for label, rec in measured.items():
        if label == f"llamacpp:{weights}" or label.startswith(f"llamacpp:{weights}+kv:"):
            w = ((rec.get("row") or {}).get("memory") or {}).get("weights_bytes")
            if w:
                return int(w)
    return None


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def source_path(source: str, allowed_dir: Path | None) -> Path:
    """The local GGUF of ``source`` ("embedded", a .gguf, a folder holding one)."""
    path = sources.resolve_local(source or "embedded", allowed_dir)
    if path.is_dir() and any(path.glob("*.gguf")):
        path = sources.find_gguf(path, None)
    if not (path.is_file() and path.suffix == ".gguf"):
        raise InvalidRequest(f"The fit advisor reads a GGUF model on this machine; {source!r} is not one.", "model")
    return path


def table_text(rows: list[FitRow], budget_line: str) -> str:
    """The advice as plain text (the command line's --fit output)."""
    lines = [f"Budget: {budget_line}", "",
             f"{'':2}{'weights':<16}{'KV':<6}{'predicted MiB':>14}{'±%':>5}{'fits':>6}{'KLD mean':>10}{'top-1 %':>9}"
             f"{'tok/s':>8}"]
    for r in rows:
        mark = "->" if r.recommended else "  "
        kld = f"{r.kld_mean:.4f}" if r.measured else "—"
        top1 = f"{r.top1_agreement * 100:.1f}" if r.top1_agreement is not None else "—"
        tps = f"{r.decode_tokens_per_s:.1f}" if r.decode_tokens_per_s else "—"
        lines.append(f"{mark}{r.weights:<16}{r.kv:<6}{r.predicted_mib:>14,.1f}{r.tolerance_pct:>5.0f}"
                     f"{'yes' if r.fits else 'no':>6}{kld:>10}{top1:>9}{tps:>8}")
    best = next((r for r in rows if r.recommended), None)
    lines += ["", f"Recommended: {best.variant} ({best.predicted_mib:,.1f} MiB predicted"
                  f"{', KLD ' + format(best.kld_mean, '.4f') if best.measured else ', not measured yet'})"
              if best else "Nothing fits: raise the budget, lower the context or the slots."]
    lines.append("— = not measured yet: evaluate it in the lab (Evaluate tab or /evaluate).")
    return "\n".join(lines)
