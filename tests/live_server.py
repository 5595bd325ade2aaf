"""The real app under uvicorn on a free port, in a thread: used by the tests (through conftest.py) and by
the serving benchmark, which must not import conftest (it would pull in pytest and switch the cache to a
per-session temporary directory)."""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The real app (FastAPI + Gradio) under uvicorn on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, settings):
        import uvicorn

        from app import create_app, server_config

        self.settings = settings
        self.app = create_app(settings)
        self.manager = self.app.state.manager
        # a bounded graceful shutdown, as app.py's: gradio_client's heartbeat SSE outlives Client.close(), and
        # uvicorn would wait for it past __exit__'s join, leaving the model loaded
        config = server_config(self.app, settings, host="127.0.0.1", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_settings(**overrides):
    from serving.settings import Settings

    base = dict(port=free_port(), no_model=True, n_ctx=2048)
    base.update(overrides)
    return Settings(**base)


def wait_healthy(url: str, proc=None, timeout: float = 120.0) -> None:
    """Poll ``url``/health until 200 (a started ``python app.py``); fail if ``proc`` dies or time runs out."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f} s")


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy value, polled every 0.2 s; AssertionError naming ``what`` after
    ``timeout`` seconds (a liveness bound, not a speed assertion)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
