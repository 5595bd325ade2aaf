"""Which remote engines a server exposed beyond loopback may talk to (``--allow-remote``), and whether
a base URL is the server's own configured engine (the only one that gets ``--remote-api-key``).

A base URL is allowed when it has the scheme, host and port of one of the prefixes and its path
lies under the prefix's path, segment by segment: ``http://gpu:8000`` allows
``http://gpu:8000/v1`` but not ``http://gpu:8000.evil.example`` or ``http://gpu:80001``.

Paths are compared as the engine will read them: percent-decoded (repeatedly, so ``%252e`` too),
backslashes taken as slashes, and dot segments resolved (``..;`` too, as some servers read it), so
``http://gpu:8000/v1/../admin`` and ``/v1/%2e%2e/admin`` are ``/admin``, not under ``/v1``. A path
that climbs above the root, holds control characters or still changes after several decodings is
refused outright. The host must read the same to ``urllib`` and to ``httpx`` (the client that sends
the request), so a parser difference cannot smuggle another host past the check.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import httpx

_DECODE_ROUNDS = 4


def _segments(path: str) -> list[str] | None:
    """The path's segments as a server would resolve them; None when it cannot be trusted."""
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        return None  # still encoded after several rounds: nothing a real engine's base needs
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return None
    out: list[str] = []
    for seg in path.replace("\\", "/").split("/"):
        bare = seg.split(";", 1)[0]  # "..;x" reads as ".." on some servers
        if bare in ("", "."):
            continue
        if bare == "..":
            if not out:
                return None  # above the root
            out.pop()
            continue
        out.append(seg)
    return out


def _parts(url: str) -> tuple[str, str, int | None, list[str]] | None:
    try:
        u = urlsplit(url.strip())
        port = u.port
        sent = httpx.URL(url.strip())
    except (ValueError, httpx.InvalidURL):
        return None
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        return None
    if sent.host.lower().strip("[]") != u.hostname.lower().strip("[]") or sent.userinfo:
        return None  # the two parsers disagree on the host: refuse rather than guess which one is sent
    segments = _segments(u.path)
    if segments is None:
        return None
    port = port or (443 if u.scheme == "https" else 80)
    return u.scheme, u.hostname.lower(), port, segments


def remote_allowed(base: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    target = _parts(base)
    if target is None:
        return False
    for prefix in prefixes:
        allowed = _parts(prefix)
        if allowed and allowed[:3] == target[:3] and target[3][:len(allowed[3])] == allowed[3]:
            return True
    return False


def same_engine(base: str, other: str | None) -> bool:
    """Whether two base URLs name the same engine (scheme, host, port and resolved path all equal)."""
    if not other:
        return False
    a, b = _parts(base), _parts(other)
    return a is not None and a == b


class ServerEngine:
    """The remote engine this server is configured with (``--api-base``, or ``--model URL`` with
    ``--backend remote``) and its key (``--remote-api-key``). The key goes to that engine only: a load
    that names another URL (a caller's ``api_base``, a model ``http://host/v1#name``) sends the
    caller's own key or none."""

    def __init__(self, bases: tuple[str, ...] = (), key: str | None = None):
        self.bases = tuple(b for b in bases if b)
        self._key = key or None

    def key_for(self, base: str, key: str | None) -> str | None:
        """The key a load of ``base`` may send, given the key its spec carries (the server's default
        or the caller's): the server's own key is dropped unless ``base`` is the server's engine."""
        if not key or self._key is None or key != self._key:
            return key or None
        return key if any(same_engine(base, b) for b in self.bases) else None

    def __repr__(self) -> str:  # never the key
        return f"ServerEngine(bases={self.bases!r}, key={'set' if self._key else 'none'})"
