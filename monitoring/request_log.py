"""A structured request log: one JSON line per finished request (never the prompt text unless the
operator asked for it with --log-prompts)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from monitoring.metrics import RequestStats

FIELDS = ("request_id", "endpoint", "model", "quantization", "prompt_tokens", "completion_tokens", "ttft_s",
          "tpot_s", "e2e_s", "queue_wait_s", "tokens_per_s", "finish_reason", "outcome", "error", "client",
          "peak_rss_bytes")


class RequestLog:
    def __init__(self, target: str | None = "-"):
        """``target``: "-" for stdout, a file path to append to, or None/"" for no log."""
        self._lock = threading.Lock()
        self._own = False
        self._out: TextIO | None
        if not target:
            self._out = None
        elif target == "-":
            self._out = sys.stdout
        else:
            Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._out = open(Path(target).expanduser(), "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._own = True

    def on_event(self, event: str, s: RequestStats) -> None:
        if event != "finished" or self._out is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s.started_at)) + "Z"}
        d = s.as_dict()
        record.update({k: d.get(k) for k in FIELDS})
        if s.draft_tokens is not None:  # speculative decoding
            record.update(draft_tokens=s.draft_tokens, accepted_tokens=s.accepted_tokens)
        if s.sampling:  # the samplers the engine was given away from their defaults
            record["sampling"] = s.sampling
        if s.prompt is not None:
            record["prompt"] = s.prompt
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def on_pool_event(self, model: str, event: str, detail: str = "") -> None:
        """A model pool load, failed load, eviction or unload, as its own line (``event`` model_load,
        model_load_failed, model_evicted, model_idle_unload, model_unload; no request fields)."""
        if self._out is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z", "event": f"model_{event}",
                  "model": model, "detail": detail}
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._own and self._out is not None:
            self._out.close()
            self._out = None
