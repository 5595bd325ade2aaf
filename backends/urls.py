"""Which remote engines a server exposed beyond loopback may talk to (``--allow-remote``).

A base URL is allowed when it has the scheme, host and port of one of the prefixes and its path
lies under the prefix's path, segment by segment: ``http://gpu:8000`` allows
``http://gpu:8000/v1`` but not ``http://gpu:8000.evil.example`` or ``http://gpu:80001``.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def _parts(url: str) -> tuple[str, str, int | None, list[str]] | None:
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        return None
    port = port or (443 if u.scheme == "https" else 80)
    return u.scheme, u.hostname.lower(), port, [p for p in u.path.split("/") if p]


def remote_allowed(base: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    target = _parts(base)
    if target is None:
        return False
    for prefix in prefixes:
        allowed = _parts(prefix)
        if allowed and allowed[:3] == target[:3] and target[3][:len(allowed[3])] == allowed[3]:
            return True
    return False
