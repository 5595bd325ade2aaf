"""The auth matrix: every route of the app, every kind of credential, each way auth is configured.

The routes come from the app itself (``app.routes``, the mounted Gradio app's included), so a route
added later is checked without being listed here: it must refuse every wrong credential, or be on
an allow-list below that says why it is public. Credentials: none, a wrong password for a right
user, another user's password, the API key as a user's password, a wrong or truncated key, Basic
and Bearer (``user:pass`` too), each against ``--auth`` alone, ``--api-key`` alone, and both.
Real servers on 127.0.0.1, httpx, the openai client and gradio_client. No model is needed: a
refusal happens before any handler, and an accepted request only has to get past the door.
"""

from __future__ import annotations

import base64
import re

import httpx
import openai
import pytest
from gradio_client import Client
from starlette.routing import Mount

from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow

USERS = {"alice": "wonderland", "bob": "looking-glass"}
KEY = "sk-matrix-7f3a9c"

# The app's own routes anyone may call (serving/auth.py PUBLIC_PATHS): liveness, readiness (status
# only without credentials), the OpenAPI schema; /metrics unless --protect-metrics.
PUBLIC = {"/health", "/live", "/openapi.json", "/metrics"}

# Gradio's own routes that answer without its login, and why that is fine. A route of a newer
# Gradio that is not here and answers without a login fails the test, to be looked at.
GRADIO_PUBLIC = {
    "/login", "/login/", "/logout",  # the login itself
    "/",  # the page: the login form until logged in
    "/svelte/{path:path}", "/static/{path:path}", "/assets/{path:path}", "/favicon.ico", "/theme.css",
    "/robots.txt", "/pwa_icon/{size}", "/pwa_icon", "/manifest.json", "/gradio_api/theme.css",
    "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}",  # static files of the frontend
    "/gradio_api/user", "/gradio_api/user/", "/gradio_api/login_check", "/gradio_api/login_check/",
    "/gradio_api/token", "/gradio_api/token/", "/gradio_api/app_id", "/gradio_api/app_id/",  # who am I
    "/gradio_api/runs", "/gradio_api/runs/",  # the page again (login form until logged in)
    "/monitoring/{key}",  # needs Gradio's random monitoring key
    "/gradio_api/startup-events",  # runs the startup events once; they ran at start already
    "/gradio_api/reset", "/gradio_api/reset/",  # a no-op in Gradio 6
    "/gradio_api/cancel", "/gradio_api/heartbeat/{session_hash}",  # need a random session hash / event id
    "/gradio_api/stream/{event_id}", "/gradio_api/stream/{event_id}/close",
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8",
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}",
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file",
    "/gradio_api/run-history/connect", "/gradio_api/run-history/buckets", "/gradio_api/run-history/records",
    "/gradio_api/run-history/records/{endpoint}/{record_id}/assets/{asset_id}",  # need a Hugging Face token
    "/gradio_api/vibe-edit", "/gradio_api/vibe-edit/", "/gradio_api/undo-vibe-edit",
    "/gradio_api/undo-vibe-edit/", "/gradio_api/vibe-code", "/gradio_api/vibe-code/",
    "/gradio_api/vibe-starter-queries", "/gradio_api/vibe-starter-queries/",  # 403 unless gradio --vibe
}

CONFIGS = ("auth", "key", "both")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# label -> (Authorization header, the configurations that must accept it)
HEADERS = {
    "none": (None, ()),
    "basic alice": (basic("alice", "wonderland"), ("auth", "both")),
    "basic bob": (basic("bob", "looking-glass"), ("auth", "both")),
    "bearer alice:pass": ("Bearer alice:wonderland", ("auth", "both")),
    "bearer key": (f"Bearer {KEY}", ("key", "both")),
    "bearer key, lower-case scheme": (f"bearer {KEY}", ("key", "both")),
    "basic api:key": (basic("api", KEY), ("key", "both")),
    "basic alice, wrong password": (basic("alice", "wrong"), ()),
    "basic alice, bob's password": (basic("alice", "looking-glass"), ()),
    "basic unknown user": (basic("nobody", "wonderland"), ()),
    "bearer alice:wrong": ("Bearer alice:wrong", ()),
    "bearer alice:ANY": ("Bearer alice:ANY", ()),
    "bearer alice, bob's password": ("Bearer alice:looking-glass", ()),
    "bearer a password alone": ("Bearer wonderland", ()),
    "basic alice with the key": (basic("alice", KEY), ()),
    "bearer alice with the key": (f"Bearer alice:{KEY}", ()),
    "basic no user with the key": (basic("", KEY), ()),
    "basic api, wrong password": (basic("api", "wrong"), ()),
    "basic api with alice's password": (basic("api", "wonderland"), ()),
    "bearer wrong key": ("Bearer sk-wrong", ()),
    "bearer key + 1 char": (f"Bearer {KEY}x", ()),
    "bearer key - 1 char": (f"Bearer {KEY[:-1]}", ()),
    "bearer empty": ("Bearer", ()),
    "basic not base64": ("Basic !!!not-base64", ()),
    "other scheme with the key": (f"Token {KEY}", ()),
}
# Gradio's login form: (user, password) -> the configurations that must accept it
LOGINS = {
    ("alice", "wonderland"): ("auth", "both"), ("bob", "looking-glass"): ("auth", "both"), ("api", KEY): ("key", "both"),
    ("alice", KEY): (), ("bob", KEY): (), ("nobody", KEY): (), ("", KEY): (), ("alice", "wrong"): (),
    ("alice", "looking-glass"): (), ("api", "wonderland"): (), ("api", "wrong"): (), ("alice", ""): (),
}


def leaves(routes, prefix: str = ""):
    """(path, methods) of every endpoint under ``routes``, through mounts and included routers
    (FastAPI versions differ: some flatten included routers, newer ones keep them as one route)."""
    for route in routes:
        if isinstance(route, Mount):
            yield from leaves(route.routes, prefix + route.path.rstrip("/"))
        elif hasattr(route, "effective_route_contexts"):
            for ctx in route.effective_route_contexts():
                yield prefix + ctx.path, frozenset(getattr(ctx.original_route, "methods", None) or {"GET"})
        elif hasattr(route, "path"):
            yield prefix + route.path, frozenset(getattr(route, "methods", None) or {"GET"})


def is_gradio(route) -> bool:
    return isinstance(route, Mount) and route.path in ("", "/")


def own_routes(app) -> list[tuple[str, str]]:
    """Every route of the app but the Gradio app mounted at the root (other mounts included)."""
    return sorted({(path, m) for route in app.routes if not is_gradio(route)
                   for path, methods in leaves([route]) for m in methods if m != "HEAD"})


def gradio_routes(app) -> list[tuple[str, str]]:
    own = {path for path, _ in own_routes(app)}  # shadowed by the app's own (e.g. /openapi.json)
    mounts = [r for r in app.routes if is_gradio(r)]
    return sorted({(path or "/", m) for path, methods in leaves(mounts) if (path or "/") not in own
                   for m in methods if m != "HEAD"})


def concrete(path: str, api_name: str = "model_status") -> str:
    path = path.replace("{api_name}", api_name)
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.fixture(scope="module", params=CONFIGS)
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"matrix-{request.param}")
    users = folder / "users.txt"
    users.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    config = {"auth": dict(auth=str(users)), "key": dict(api_key=KEY, protect_metrics=True),
              "both": dict(auth=str(users), api_key=KEY)}[request.param]
    with LiveServer(make_settings(cache_dir=folder / "cache", **config)) as srv:
        srv.config = request.param
        yield srv


def call(http: httpx.Client, path: str, method: str, header: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": header} if header is not None else {}
    return http.request(method, path, headers=headers, **kw)


def session(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60)


def test_the_routes_are_enumerated_from_the_app(server):
    paths = {p for p, _ in own_routes(server.app)}
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize",
            "/detokenize"} <= paths
    assert PUBLIC <= paths  # the allow-list names routes that exist
    gradio = {p for p, _ in gradio_routes(server.app)}
    assert {"/gradio_api/upload", "/gradio_api/queue/join", "/gradio_api/call/{api_name}", "/config"} <= gradio


def refused(path: str, r: httpx.Response) -> bool:
    """A 401 in the error shape of the API dialect that owns ``path``: Anthropic's on /v1/messages,
    Ollama's under /api, OpenAI's everywhere else."""
    if r.status_code != 401 or r.headers.get("www-authenticate") != "Bearer":
        return False
    body = r.json()
    if path.startswith("/v1/messages"):
        return body["type"] == "error" and body["error"]["type"] == "authentication_error"
    if path.startswith("/api/"):
        return list(body) == ["error"] and "API key" in body["error"]
    return body["error"]["code"] == "invalid_api_key"


def test_every_guarded_route_refuses_every_wrong_credential(server):
    public = PUBLIC - ({"/metrics"} if server.config == "key" else set())  # that server has --protect-metrics
    open_doors = []
    with session(server) as http:
        for path, method in own_routes(server.app):
            if path in public:
                continue
            for label, (header, accepted) in HEADERS.items():
                if server.config in accepted:
                    continue
                r = call(http, concrete(path), method, header, json={})
                if not refused(path, r):
                    open_doors.append(f"{method} {path} with {label}: {r.status_code}")
    assert not open_doors, "\n".join(open_doors)


def test_every_guarded_route_lets_the_right_credentials_through(server):
    shut = []
    with session(server) as http:
        for path, method in own_routes(server.app):
            for label, (header, accepted) in HEADERS.items():
                if server.config in accepted and call(http, concrete(path), method, header, json={}).status_code == 401:
                    shut.append(f"{method} {path} with {label}")
    assert not shut, "\n".join(shut)


def test_public_routes_answer_without_credentials(server):
    for path in ("/health", "/live", "/openapi.json"):
        assert httpx.get(server.url + path).status_code in (200, 503), path
    assert httpx.get(server.url + "/health").json() == {"status": "empty"}  # the status alone
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == (401 if server.config == "key" else 200)


def test_openai_client_with_each_credential(server):
    for api_key, accepted in ((KEY, ("key", "both")), ("alice:wonderland", ("auth", "both")),
                              ("alice:ANY", ()), (f"alice:{KEY}", ()), ("wonderland", ()), ("sk-wrong", ())):
        oai = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)
        if server.config in accepted:
            assert oai.models.list().data == []  # in, and no model loaded
        else:
            with pytest.raises(openai.AuthenticationError):
                oai.models.list()


GUARD_404 = ("unknown_api_name", "unknown_event_id")  # serving/gradio_guard.py: refused before Gradio, nothing served


def test_every_gradio_route_needs_a_login(server):
    fns = server.app.state.blocks.fns.values()
    api_names = sorted(fn.api_name for fn in fns if getattr(fn, "api_visibility", "public") != "private")
    api_names.append(next(fn.api_name for fn in fns if getattr(fn, "api_visibility", None) == "private"))
    assert "chat" in api_names and "load_model" in api_names
    open_doors = []
    with session(server) as http:
        for path, method in gradio_routes(server.app):
            if path in GRADIO_PUBLIC:
                continue
            for name in api_names if "{api_name}" in path else ["model_status"]:
                url = concrete(path, name)
                with http.stream(method, url, json={"data": []}) as r:
                    if r.status_code == 404 and r.headers.get("content-type", "").startswith("application/json"):
                        r.read()
                        if r.json().get("error", {}).get("code") in GUARD_404:
                            continue
                    if r.status_code != 401:
                        open_doors.append(f"{method} {url}: {r.status_code}")
    assert not open_doors, "\n".join(open_doors)


def test_gradio_login_names_exactly_one_user(server):
    for (user, password), accepted in LOGINS.items():
        r = httpx.post(server.url + "/login", data={"username": user, "password": password})
        assert (r.status_code == 200) == (server.config in accepted), (user, password, r.status_code)
    good = ("alice", "wonderland") if server.config != "key" else ("api", KEY)
    with httpx.Client(base_url=server.url, timeout=60) as http:  # a logged-in session gets in everywhere
        assert http.post("/login", data={"username": good[0], "password": good[1]}).status_code == 200
        assert http.get("/config").status_code == 200 and http.get("/gradio_api/info").status_code == 200
        up = http.post("/gradio_api/upload", files={"files": ("a.txt", b"hello")})
        assert up.status_code == 200, up.text
        assert "event_id" in http.post("/gradio_api/call/model_status", json={"data": []}).json()
    c = Client(server.url, auth=good, verbose=False)
    try:
        assert c.predict(api_name="/model_status")
    finally:
        c.close()
    with pytest.raises(ValueError, match="Could not login"):
        Client(server.url, auth=("alice", KEY), verbose=False)
