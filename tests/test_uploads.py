"""Gradio's upload route (``POST /gradio_api/upload``) with real httpx posts against the real app: a
size limit answered before anything is stored, a bound on what is stored, old uploads deleted, and no
server path in the answer (the relative path it gives still works as a file link)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow
LIMIT = 64 * 1024  # --max-upload-bytes for these tests; the store then holds at most 10 times this


@pytest.fixture(scope="module")
def server(cache_dir, tmp_path_factory):
    """The app (no model) with its own Gradio upload folder, so what it stores can be counted."""
    folder = tmp_path_factory.mktemp("uploads") / "gradio"
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        with LiveServer(make_settings(cache_dir=cache_dir, request_log="", max_upload_bytes=LIMIT)) as srv:
            srv.folder = folder
            yield srv
    finally:
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


def stored(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def upload(srv, content: bytes, name: str = "a.txt") -> httpx.Response:
    return httpx.post(srv.url + "/gradio_api/upload", files={"files": (name, content, "text/plain")}, timeout=60)


def clear(folder: Path) -> None:
    for p in sorted(folder.rglob("*"), reverse=True) if folder.exists() else []:
        p.unlink() if p.is_file() else p.rmdir()


def test_an_upload_over_the_limit_is_refused_before_anything_is_stored(server):
    clear(server.folder)
    r = upload(server, b"x" * (LIMIT + 1))
    assert r.status_code == 413 and "max-upload-bytes" in r.json()["error"]["message"]
    assert stored(server.folder)[0] == 0
    # the server keeps serving, and an upload within the limit is taken
    assert httpx.get(server.url + "/live").status_code == 200
    assert upload(server, b"small").status_code == 200


def test_an_upload_without_a_declared_length_is_refused(server):
    def chunks():
        for _ in range(4):
            yield b"y" * 1024

    r = httpx.post(server.url + "/gradio_api/upload", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=x"}, timeout=60)
    assert r.status_code == 411


def test_the_answer_names_no_server_path_and_the_link_it_gives_works(server):
    clear(server.folder)
    r = upload(server, b"hello upload\n", "notes.txt")
    assert r.status_code == 200
    (path,) = r.json()
    assert not path.startswith("/") and str(server.folder) not in path and tempfile.gettempdir() not in path
    assert path.endswith("/notes.txt")
    got = httpx.get(f"{server.url}/gradio_api/file={path}")
    assert got.status_code == 200 and got.content == b"hello upload\n"
    # a path outside the upload folder is still not served
    assert httpx.get(f"{server.url}/gradio_api/file=../../etc/passwd").status_code in (403, 404)


def test_what_is_stored_is_bounded_and_old_uploads_are_deleted(server):
    clear(server.folder)
    accepted = 0
    for i in range(14):  # 14 x 60 KiB against a store of 10 x 64 KiB
        r = upload(server, bytes([65 + i]) * (60 * 1024), f"f{i}.txt")
        if r.status_code == 200:
            accepted += 1
        else:
            assert r.status_code == 507 and "try again later" in r.json()["error"]["message"]
    n, size = stored(server.folder)
    assert accepted == 10 and n == 10 and size <= 10 * LIMIT, (accepted, n, size)
    # an hour later (the files' times moved back), the next upload deletes them and is taken
    old = time.time() - 2 * 3600
    for p in server.folder.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))
    assert upload(server, b"fresh", "fresh.txt").status_code == 200
    assert stored(server.folder)[0] == 1
