"""The server's event loop and HTTP parser: uvloop and httptools (requirements.txt), which uvicorn
picks when they are installed. Each streamed token passes through the event loop, and on a CPU-only
server that time is taken from the engine's threads: with asyncio + h11 the loop spent ~320 us of
CPU per /v1 token, with these ~200 us (benchmarks/README.md, "Shared CPU"). A change that pins
uvicorn back to its pure-Python choices, or drops the packages, fails here."""

from __future__ import annotations

import sys

import httpx
import pytest

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow


def test_the_server_runs_uvloop_and_httptools_and_still_answers():
    with LiveServer(make_settings()) as srv:
        assert srv.server.config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
        loop = srv.server.servers[0].get_loop()
        if sys.platform != "win32":  # uvloop has no Windows build; asyncio's loop there
            assert type(loop).__module__.startswith("uvloop"), type(loop)
        r = httpx.get(srv.url + "/health", timeout=30)
        assert r.status_code == 503 and r.json()["status"] == "empty"
