"""Who may use what.

- ``--auth USER:PASS`` (or a file of such lines): Gradio's login protects the UI and the Gradio API
  (gradio_client: ``Client(url, auth=(user, pass))``). /v1, /tokenize and /detokenize accept the same
  credentials (HTTP Basic, or Bearer ``user:pass``).
- ``--api-key KEY``: /v1, /api (Ollama's), /tokenize and /detokenize accept ``Authorization: Bearer
  KEY``, or Anthropic's ``x-api-key: KEY`` header. The UI and
  the Gradio API then need a login too (no door stays open), and the key opens it for one identity
  only: the user name ``api`` (``KEY_USER``), never a name of ``--auth``. A login names exactly one
  user and checks that user's password: the key is not a password for every user, so it cannot be
  used to act as ``alice`` (her chats under ``--chat-dir``, her rate-limit bucket, her name in the
  request log). ``api`` is a shared service identity: the server keeps no chats for it
  (``is_personal``), they stay in each browser.
- /health and /live are always open (/health tells callers without credentials the status only);
  /metrics is open unless ``--protect-metrics``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.routing import Match, Mount

KEY_USER = "api"  # the one user name the --api-key logs in as (Gradio login, HTTP Basic)
PUBLIC_PATHS = frozenset({"/health", "/live", "/openapi.json"})
KEY_HINT = "Missing or invalid API key: send 'x-api-key: <key>' or 'Authorization: Bearer <key>'."


def parse_auth(auth: str | None) -> list[tuple[str, str]]:
    if not auth:
        return []
    path = Path(auth).expanduser()
    lines = path.read_text().splitlines() if ":" not in auth and path.is_file() else [auth]
    pairs = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                raise ValueError("--auth needs USER:PASS (or a file of USER:PASS lines)")
            pairs.append((user, password))
    return pairs


def is_personal(user: str | None) -> bool:
    """Whether ``user`` is one person's login (whose chats the server may keep), not the shared
    identity the API key logs in as."""
    return bool(user) and user != KEY_USER


class AccessPolicy:
    def __init__(self, auth: str | None, api_key: str | None, protect_metrics: bool = False):
        self.pairs = parse_auth(auth)
        self.api_key = api_key or None
        self.protect_metrics = protect_metrics
        if self.api_key and any(user == KEY_USER for user, _ in self.pairs):
            raise ValueError(f"--auth names the user '{KEY_USER}', the name --api-key logs in as: rename that user")

    @property
    def configured(self) -> bool:
        """Whether any credentials are asked for at all."""
        return bool(self.pairs or self.api_key)

    @property
    def ui_login(self) -> Callable[[str, str], bool] | None:
        """The function Gradio calls to check a login, or None for an open UI."""
        if not self.configured:
            return None
        return self.login_ok

    def login_ok(self, user: str, password: str) -> bool:
        """A login names one user: that user's password, or the API key for ``KEY_USER`` alone."""
        return self._key_ok(user, password) or self._pair_ok(user, password)

    def http_client_id(self, authorization: str | None) -> str | None:
        """The client id for valid /v1 credentials, None if they are missing or wrong."""
        if not self.configured:
            return "open"
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            if self.api_key and _eq(value, self.api_key):
                return self._key_id()
            user, sep, password = value.partition(":")
            if sep and self._pair_ok(user, password):
                return "user:" + user
        elif scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if sep and self._key_ok(user, password):
                return self._key_id()
            if sep and self._pair_ok(user, password):
                return "user:" + user
        return None

    def _key_ok(self, user: str, password: str) -> bool:
        return bool(self.api_key) and _eq(user, KEY_USER) and _eq(password, self.api_key)

    def _key_id(self) -> str:
        return "key:" + hashlib.sha256(self.api_key.encode()).hexdigest()[:12]

    def _pair_ok(self, user: str, password: str) -> bool:
        # every pair is compared (no early exit), each in constant time
        return sum(_eq(user, u) & _eq(password, p) for u, p in self.pairs) > 0

    def public(self, path: str) -> bool:
        """The app's own routes anyone may call: liveness, readiness, the OpenAPI schema, and
        /metrics unless --protect-metrics."""
        return path in PUBLIC_PATHS or (path == "/metrics" and not self.protect_metrics)


def _is_gradio(route) -> bool:
    """The Gradio app mounted at the root: it checks its own login."""
    return isinstance(route, Mount) and route.path in ("", "/")


def _header(scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class ApiKeyMiddleware:
    """Pure ASGI (streams and disconnects pass through untouched): checks the credentials of every
    request to one of the app's own routes (``router``: /v1, /tokenize, /detokenize, and any route
    added later) before its handler runs, unless the route is public (``AccessPolicy.public``);
    records the client id in request.state.client_id. Deny by default: a new route is guarded
    without being listed here. The Gradio app mounted beside them has its own login.
    ``refusal(path, status, message)`` may write the 401 in the shape of the API dialect that owns
    ``path`` (None: OpenAI's)."""

    def __init__(self, app, policy: AccessPolicy, router=None, refusal: Callable[[str, int, str], Any] | None = None):
        self.app = app
        self.policy = policy
        self.router = router
        self.refusal = refusal

    def guards(self, scope) -> bool:
        path = scope["path"]
        if self.policy.public(path):
            return False
        if path in ("/v1", "/api") or path.startswith(("/v1/", "/api/")):
            return True
        return self.router is not None and any(
            not _is_gradio(route) and route.matches(scope)[0] != Match.NONE for route in self.router.routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.policy.configured and self.guards(scope):
            auth = _header(scope, b"authorization")
            if auth is None and (key := _header(scope, b"x-api-key")) is not None:  # as Anthropic's clients send it
                auth = "Bearer " + key
            client = self.policy.http_client_id(auth)
            if client is None:
                response = self.refusal(scope["path"], 401, KEY_HINT) if self.refusal else None
                response = response or JSONResponse(
                    {"error": {"message": "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                               "type": "invalid_request_error", "param": None,
                               "code": "invalid_api_key"}}, status_code=401)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["client_id"] = client
        await self.app(scope, receive, send)
