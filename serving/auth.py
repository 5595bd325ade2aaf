"""Who may use what.

- ``--auth USER:PASS`` (or a file of such lines): Gradio's login protects the UI and the Gradio API
  (gradio_client: ``Client(url, auth=(user, pass))``).
- ``--api-key KEY``: /v1 (and /tokenize, /detokenize) requires ``Authorization: Bearer KEY``; the UI and the Gradio API then
  require a login too, with the key as password (any user name), so no door stays open.
- With only ``--auth``, /v1 accepts the same credentials (HTTP Basic, or Bearer ``user:pass``).
- /health is always open; /metrics is open unless ``--protect-metrics``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

from starlette.responses import JSONResponse


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


class AccessPolicy:
    def __init__(self, auth: str | None, api_key: str | None, protect_metrics: bool = False):
        self.pairs = parse_auth(auth)
        self.api_key = api_key or None
        self.protect_metrics = protect_metrics

    @property
    def ui_login(self) -> Callable[[str, str], bool] | None:
        """The function Gradio calls to check a login, or None for an open UI."""
        if not self.pairs and not self.api_key:
            return None

        def check(user: str, password: str) -> bool:
            if self.api_key and _eq(password, self.api_key):
                return True
            return any(_eq(user, u) and _eq(password, p) for u, p in self.pairs)

        return check

    def http_client_id(self, authorization: str | None) -> str | None:
        """The client id for valid /v1 credentials, None if they are missing or wrong."""
        if not self.pairs and not self.api_key:
            return "open"
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            if self.api_key and _eq(value, self.api_key):
                return "key:" + hashlib.sha256(value.encode()).hexdigest()[:12]
            if ":" in value and self._pair_ok(*value.split(":", 1)):
                return "user:" + value.split(":", 1)[0]
        elif scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if self._pair_ok(user, password) or (self.api_key and _eq(password, self.api_key)):
                return "user:" + user
        return None

    def _pair_ok(self, user: str, password: str) -> bool:
        return any(_eq(user, u) and _eq(password, p) for u, p in self.pairs)

    def guards(self, path: str) -> bool:
        if path.startswith("/v1/") or path in ("/v1", "/tokenize", "/detokenize"):
            return True
        return self.protect_metrics and path == "/metrics"


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class ApiKeyMiddleware:
    """Pure ASGI (streams and disconnects pass through untouched): checks /v1 (and /metrics when
    asked) before any handler runs, and records the client id in request.state.client_id."""

    def __init__(self, app, policy: AccessPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.policy.guards(scope["path"]):
            auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            client = self.policy.http_client_id(auth)
            if client is None:
                response = JSONResponse(
                    {"error": {"message": "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                               "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["client_id"] = None if client == "open" else client
        await self.app(scope, receive, send)
