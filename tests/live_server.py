"""What the tests need around a live app: settings for one on a free port (``app.LiveServer`` runs it in
a thread), and waiting for a server or a condition. Kept out of conftest.py so a test can import it
without the fixtures."""

from __future__ import annotations

import time


def make_settings(**overrides):
    """Settings for a test server: a free port, nothing loaded at start, ``overrides`` on top."""
    from app import free_port
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
