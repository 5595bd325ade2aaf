"""Which model a request names, and the list of the models a server serves (OpenAI's
``GET /v1/models`` and llama-server router's ``GET /models`` show it).

Without ``--models-dir`` the server has its one chat model, listed alone, and a request naming
another gets 404 as before. With it, every servable name is listed with its status (loaded,
loading, unloaded, error) and, when resident, its memory (``monitoring.model_memory``: the same
figure as /stats, /metrics and /health); a request naming one is answered by it (``ModelPool``).
"""

from __future__ import annotations

import time
from typing import Any

from backends.errors import ModelNotFound, NoModelLoaded
from backends.manager import ModelManager
from backends.pool import ERROR, LOADED
from monitoring.model_memory import model_memory


def resolve_model(manager: ModelManager, name: str | None) -> tuple[str, str | None]:
    """(the name to answer with, the pool model to run on or None for the chat's model). Raises the
    typed error a bad name deserves: ModelNotFound (404) for a name the server does not serve,
    ModelNotResident (400) for one not loaded under --no-models-autoload, NoModelLoaded (503)."""
    name = name or ""
    if manager.pooled(name):
        entry = manager.pool.servable_entry(name)
        return entry.name, entry.name
    cur = manager.current
    if cur is None and manager.pool is not None:
        raise NoModelLoaded("No chat model is loaded on this server: name one of its models in 'model' "
                            "(GET /v1/models lists them).")
    if cur is None:
        raise NoModelLoaded("No model is loaded on this server.")
    if name not in (cur.name, "default", ""):
        raise ModelNotFound(f"The model '{name}' does not exist on this server; it serves '{cur.name}'.")
    return cur.name, None


def _chat_model_row(manager: ModelManager) -> dict[str, Any] | None:
    cur = manager.current
    if cur is None:
        return None
    return {"id": cur.name, "object": "model", "created": int(time.time() - cur.load_seconds),
            "owned_by": "quantlab", "quantization": cur.quantization, "backend": cur.backend,
            "context_length": cur.context_length, "max_model_len": cur.context_length,
            "parallel": manager.max_concurrency, "capabilities": cur.capabilities}


def _pool_row(row: dict[str, Any]) -> dict[str, Any]:
    info = row["info"]
    out: dict[str, Any] = {"id": row["name"], "object": "model", "created": int(time.time()), "owned_by": "quantlab",
                           "status": row["status"], "backend": row["backend"], "kind": row["kind"],
                           "running": row["running"], "memory_mib": None}
    if info is not None:
        out.update({"created": int(time.time() - info.load_seconds), "quantization": info.quantization,
                    "context_length": info.context_length, "max_model_len": info.context_length,
                    "memory_mib": model_memory(info)["total_mib"], "capabilities": info.capabilities})
    if row["status"] == ERROR:
        out["error"] = row["error"]
    return out


def model_rows(manager: ModelManager) -> list[dict[str, Any]]:
    """Every servable model, OpenAI's shape plus ``status`` and ``memory_mib`` in pool mode: the
    chat's model first (when it is not one of the pool's names), then the pool's names."""
    chat = _chat_model_row(manager)
    if manager.pool is None:
        return [chat] if chat else []
    rows = manager.pool.listing()
    data = []
    if chat is not None and not any(r["chat_model"] for r in rows):
        chat.update({"status": LOADED, "memory_mib": model_memory(manager.current)["total_mib"]})
        data.append(chat)
    return data + [_pool_row(r) for r in rows]
