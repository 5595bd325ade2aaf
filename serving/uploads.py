"""Gradio's file upload (``POST /gradio_api/upload``: Import JSON, an evaluation text), bounded and
without server paths. Pure ASGI, in front of Gradio; takes the Blocks as an object (no gradio import).

- A body must declare its ``Content-Length`` (411 otherwise; uvicorn then holds the client to it), of
  at most ``--max-upload-bytes`` (413, answered before anything is read or stored).
- Uploads are kept for ``ttl_s`` (an hour), then deleted at the next upload; while ``max_files``
  uploads or ``max_store_bytes`` are stored, a new one gets 507 (the disk is not filled by one client).
- Gradio answers an upload with the absolute paths it stored the files at. The answer is rewritten to
  paths relative to Gradio's upload folder (``<sha>/<name>``), and what a client sends back (a
  FileData ``path`` in ``/gradio_api/call|run|queue`` bodies, a ``/gradio_api/file=<path>`` link) is
  mapped back to the upload folder here, so pages and gradio_client work unchanged.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path, PurePosixPath

from starlette.responses import JSONResponse

from serving.body_limit import replay

UPLOAD = "/gradio_api/upload"
FILE_PREFIX = "/gradio_api/file="
EVENT_PREFIXES = ("/gradio_api/call/", "/gradio_api/run/", "/gradio_api/queue/join")
UPLOAD_TTL_S = 3600
MAX_STORED_UPLOADS = 200
MAX_WALK_DEPTH = 32  # FileData sits at most a few levels deep in an event's inputs


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
                        status_code=status)


class UploadStore:
    """The uploads Gradio recorded (``blocks.upload_file_set``): what they hold, and deleting the old."""

    def __init__(self, blocks, ttl_s: float, max_files: int, max_store_bytes: int):
        self.blocks = blocks
        self.folder = Path(blocks.GRADIO_CACHE).resolve()
        self.ttl_s, self.max_files, self.max_store_bytes = ttl_s, max_files, max_store_bytes
        self._lock = threading.Lock()

    def prune(self) -> tuple[int, int]:
        """Delete uploads older than the TTL; (files, bytes) of those left."""
        files = self.blocks.upload_file_set
        now = time.time()
        count = size = 0
        with self._lock:
            for name in list(files):
                path = Path(name)
                try:
                    st = path.stat()
                except OSError:  # gone (Gradio's own cleanup, or a move still under way: counted next time)
                    if not os.path.lexists(path):
                        files.discard(name)
                    continue
                if now - st.st_mtime > self.ttl_s:
                    self.delete(path)
                    files.discard(name)
                    continue
                count += 1
                size += st.st_size
        return count, size

    def delete(self, path: Path) -> None:
        try:
            path.unlink()
            if path.parent != self.folder and path.parent.is_relative_to(self.folder):
                path.parent.rmdir()  # Gradio's <sha>/ folder, when it held only this file
        except OSError:
            pass

    def relative(self, path: str) -> str:
        """An absolute path Gradio stored an upload at, as the client sees it."""
        p = Path(path)
        return p.relative_to(self.folder).as_posix() if p.is_absolute() and p.is_relative_to(self.folder) else path

    def absolute(self, path: str) -> str | None:
        """A relative upload path back inside the upload folder; None when it is not one."""
        if not path or path.startswith(("/", "\\")) or "://" in path or "\\" in path:
            return None
        parts = PurePosixPath(path).parts
        if not parts or any(p in ("..", ".") or ":" in p for p in parts):
            return None
        return str(self.folder.joinpath(*parts))


class UploadGuardMiddleware:
    def __init__(self, app, blocks, max_bytes: int, ttl_s: float = UPLOAD_TTL_S,
                 max_files: int = MAX_STORED_UPLOADS, max_store_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.store = UploadStore(blocks, ttl_s, max_files, max_store_bytes or 10 * max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == UPLOAD and method == "POST":
            await self.upload(scope, receive, send)
        elif path.startswith(FILE_PREFIX):
            await self.app(self.file_scope(scope), receive, send)
        elif method == "POST" and path.startswith(EVENT_PREFIXES):
            await self.event(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def upload(self, scope, receive, send):
        import anyio

        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is None:
            await error(411, "A file upload must declare its Content-Length.", "length_required")(scope, receive, send)
            return
        try:
            size = int(declared)
        except ValueError:
            size = -1
        if size < 0:
            await error(400, "Invalid Content-Length header.", "invalid_length")(scope, receive, send)
            return
        if size > self.max_bytes:
            await error(413, f"The upload is larger than this server accepts ({self.max_bytes:,} bytes, "
                             "--max-upload-bytes).", "payload_too_large")(scope, receive, send)
            return
        count, stored = await anyio.to_thread.run_sync(self.store.prune)
        if count >= self.store.max_files or stored + size > self.store.max_store_bytes:
            await error(507, "The server holds as many uploads as it keeps; try again later (uploads are kept "
                             f"{self.store.ttl_s // 60:.0f} minutes).", "upload_storage_full")(scope, receive, send)
            return
        await self.app(scope, receive, self.relative_paths(send))

    def relative_paths(self, send):
        """A ``send`` that rewrites the upload's answer (a JSON list of stored paths) to relative paths."""
        start: dict | None = None
        chunks: list[bytes] = []

        async def sending(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                try:
                    paths = json.loads(body)
                    if isinstance(paths, list) and all(isinstance(p, str) for p in paths):
                        body = json.dumps([self.store.relative(p) for p in paths]).encode()
                except ValueError:
                    pass
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return sending

    def file_scope(self, scope):
        """``/gradio_api/file=<sha>/<name>`` (a link to an upload as the client knows it) -> the stored file."""
        wanted = scope["path"][len(FILE_PREFIX):]
        absolute = self.store.absolute(wanted)
        if absolute is None or not os.path.exists(absolute):
            return scope
        path = FILE_PREFIX + absolute
        return {**scope, "path": path, "raw_path": path.encode()}

    async def event(self, scope, receive, send):
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("data"), list) and self.rewrite(data["data"], 0):
            body = json.dumps(data).encode()
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
        await self.app(scope, replay(body, receive), send)

    def rewrite(self, value, depth: int) -> bool:
        """Map the relative upload paths of FileData values in ``value`` back to the upload folder
        (in place); True if any changed."""
        if depth > MAX_WALK_DEPTH:
            return False
        changed = False
        if isinstance(value, dict):
            meta = value.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData" and isinstance(value.get("path"), str):
                absolute = self.store.absolute(value["path"])
                if absolute is not None and os.path.exists(absolute):
                    value["path"] = absolute
                    changed = True
            for v in value.values():
                changed = self.rewrite(v, depth + 1) or changed
        elif isinstance(value, list):
            for v in value:
                changed = self.rewrite(v, depth + 1) or changed
        return changed
