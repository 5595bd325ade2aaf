"""Where past chats live on the server, only when asked (``--chat-dir``): one JSON file per logged-in
user. Without it the chats stay in each browser's localStorage and nothing of a user touches the
server's disk. Also the stable key the browser's copy is encrypted with, so a server restart does not
make every saved chat unreadable.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from backends.errors import InvalidRequest

MAX_STORE_BYTES = 20 * 2**20  # one user's chats; a bigger save is refused


def browser_secret(folder: Path) -> str:
    """The key gr.BrowserState encrypts the chats with: made once, kept in ``folder`` (the cache
    directory), readable by this user only.

    What it protects, exactly: the browser encrypts with it, so Gradio sends it in the page's config
    to every client that can open the page (every logged-in user; everyone when there is no login).
    It keeps the stored chats unreadable to whoever holds a copy of the browser's storage (a copied
    profile, a backup, a disk image) but cannot open this app. It is not access control between the
    app's users: a user of the app who got another browser's storage could read it. Chats kept on
    the server (``--chat-dir``) are separated per login instead."""
    path = Path(folder) / "browser-state-key"
    try:
        key = path.read_text().strip()
        if len(key) >= 16:
            return key
    except OSError:
        pass
    key = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
    except OSError:  # a read-only cache: chats then last until the server restarts
        pass
    return key


class ChatStore:
    """Each user's chats in ``folder/<sha256 of the user name>.json`` (the name never becomes a path)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, user: str) -> Path:
        return self.folder / (hashlib.sha256(user.encode("utf-8")).hexdigest()[:32] + ".json")

    def load(self, user: str) -> Any:
        try:
            return json.loads(self.path(user).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def save(self, user: str, store: Any) -> None:
        data = json.dumps(store, ensure_ascii=False)
        if len(data) > MAX_STORE_BYTES:
            raise InvalidRequest(f"The saved chats are over {MAX_STORE_BYTES // 2**20} MiB: delete some.")
        path = self.path(user)
        tmp = path.with_suffix(".tmp")
        with self._lock:
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, path)
