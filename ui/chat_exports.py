"""The two files behind the chat's export buttons ("Export JSON", "Export all chats"), on the server's
disk only as long as a page can still download them.

conversation.json is one chat as ``ui/chat_history.py``'s ``export_chat`` writes it (title, the
visible messages, settings, and the whole conversation tree with each reply's stats); all-chats.json
holds every chat so. The buttons are download links, so the files exist before a click: they are rewritten after every
change to the chats. They used to go to a new temporary folder per save, never deleted, which Gradio
then copied once more into its cache (20 saves of a large store: 52 MB). Now they are written straight
into Gradio's cache folder (so Gradio serves them without a copy), in one folder per browser session
(named by a hash of Gradio's session id, which the client chooses and so never becomes a path), with
a subfolder per content: a save replaces the session's older subfolders, and the folders of sessions
idle for ``SESSION_TTL_S`` (or beyond ``MAX_SESSIONS`` or ``MAX_BYTES``, oldest first) are removed at
the next save.
What stays on disk is bounded by the open sessions, not by the number of saves. No gradio import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

from ui import chat_history as past

FOLDER = "quantlab-chat-exports"
KEEP_PER_SESSION = 2  # the newest pair, and the one before it (a download that started just before a save)
SESSION_TTL_S = 6 * 3600
MAX_SESSIONS = 64
MAX_BYTES = 256 * 2**20  # all sessions' exports together; the least recently saved sessions go first


class ChatExports:
    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir).resolve() / FOLDER
        self._lock = threading.Lock()

    def write(self, session: str | None, store: dict, chat_id: str | None) -> tuple[str, str]:
        """(conversation.json, all-chats.json) for the chat ``chat_id`` of ``store``, as paths."""
        chat = past.get_chat(store, chat_id) or past.make_chat()
        one = json.dumps(past.export_chat(chat), ensure_ascii=False, indent=2)
        every = json.dumps(past.export_all(store), ensure_ascii=False, indent=2)
        digest = hashlib.sha256(f"{len(one)}:{one}{every}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        folder = self.session_folder(session) / digest
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            paths = folder / "conversation.json", folder / "all-chats.json"
            for path, text in zip(paths, (one, every)):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, path)
            os.utime(folder)
            self._prune_session(folder.parent, keep=folder)
            self._prune_sessions()
        return str(paths[0]), str(paths[1])

    def session_folder(self, session: str | None) -> Path:
        return self.root / hashlib.sha256((session or "").encode("utf-8", "surrogatepass")).hexdigest()[:24]

    def _prune_session(self, session_dir: Path, keep: Path) -> None:
        others = sorted((p for p in session_dir.iterdir() if p.is_dir() and p != keep),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP_PER_SESSION - 1:]:
            shutil.rmtree(old, ignore_errors=True)
        os.utime(session_dir)

    def _prune_sessions(self) -> None:
        sessions = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                          reverse=True)
        now, total = time.time(), 0
        for i, folder in enumerate(sessions):
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            if i > 0 and (i >= MAX_SESSIONS or total > MAX_BYTES or now - folder.stat().st_mtime > SESSION_TTL_S):
                shutil.rmtree(folder, ignore_errors=True)
