"""The responses /v1/responses keeps for ``previous_response_id``: each one's whole conversation as
Responses input items (what it was given, then what it answered), in memory only, bounded both in
count and in size; the oldest go first. A server restart forgets them all, as it forgets every
other in-flight state; a client that needs more sends the whole conversation in ``input``."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

MAX_RESPONSES = 256
MAX_CHARS = 32 * 1024 * 1024  # of the kept items' JSON, all responses together


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_chars: int = MAX_CHARS):
        self.max_responses = max_responses
        self.max_chars = max_chars
        self._items: OrderedDict[str, tuple[list[dict], int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, items: list[dict]) -> None:
        """Keep ``items`` under ``response_id`` (one too large to keep at all is not kept)."""
        size = len(json.dumps(items, ensure_ascii=False))
        if size > self.max_chars:
            return
        with self._lock:
            self._items[response_id] = (items, size)
            self._chars += size
            while len(self._items) > self.max_responses or self._chars > self.max_chars:
                _, (_, dropped) = self._items.popitem(last=False)
                self._chars -= dropped

    def get(self, response_id: str) -> list[dict] | None:
        with self._lock:
            kept = self._items.get(response_id)
            return None if kept is None else list(kept[0])

    def __len__(self) -> int:
        return len(self._items)
