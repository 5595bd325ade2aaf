"""What the lab has measured, kept on disk: every Evaluate row, per source model and variant, with
how it was measured (reference, text, tokens, scoring, window) and on what machine. The fit advisor
reads it for the measured KLD and tok/s of a weight x KV-cache pair, the report card for its figures;
both show exactly Evaluate's numbers, never a recomputation.

One JSON file, ``<cache>/lab/measurements.json``: {source: {variant label: record}}; the latest
evaluation of a variant replaces the earlier one. Written atomically; a missing or unreadable file
is an empty store."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import uuid
from pathlib import Path

STORE = Path("lab") / "measurements.json"
_LOCK = threading.Lock()  # one writer at a time within the process; the file swap is atomic across processes


def store_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / STORE


def load(cache_dir: Path) -> dict:
    try:
        data = json.loads(store_path(cache_dir).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def source_key(source: str) -> str:
    """The source as the store names it: "embedded", a path or a repo id, trimmed."""
    return (source or "embedded").strip() or "embedded"


def record(cache_dir: Path, source: str, rows: list[dict], *, reference: str, text: str | None, max_tokens: int,
           window: int, scoring: str, machine: dict | None = None) -> None:
    """Keep one evaluation's rows (``QualityRow.as_dict()``); each row's record says how it was measured."""
    how = {"reference": reference, "text": Path(text).name if text else "built-in (Python docstrings)",
           "max_tokens": int(max_tokens), "window": int(window), "scoring": scoring,
           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine or machine_info()}
    with _LOCK:
        data = load(cache_dir)
        mine = data.setdefault(source_key(source), {})
        for r in rows:
            mine[r["variant"]] = {"row": r, **how}
        path = store_path(cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def of_source(cache_dir: Path, source: str) -> dict[str, dict]:
    """{variant label: record} measured for ``source``."""
    return load(cache_dir).get(source_key(source), {})


def machine_info(monitor=None) -> dict:
    """What a measurement was made on: CPU, cores, RAM, each GPU (name and memory) when there is one."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count() or 1, "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
           "os": f"{platform.system()} {platform.release()}", "gpus": []}
    if monitor is not None and monitor.gpu.available:
        out["gpus"] = [{"name": d.get("name"), "memory_gib": round(d.get("total_bytes", 0) / 2**30, 1)}
                       for d in monitor.gpu.devices()]
    return out


def machine_line(m: dict) -> str:
    gpus = ", ".join(f"{g.get('name')} ({g.get('memory_gib')} GiB)" for g in m.get("gpus") or [])
    return (f"{m.get('cpu')} · {m.get('cores')} cores · {m.get('ram_gib')} GiB RAM"
            + (f" · {gpus}" if gpus else " · no GPU") + (f" · {m['os']}" if m.get("os") else ""))
