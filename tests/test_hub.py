"""Models from the Hugging Face Hub, offline: a hand-built hub-cache layout (the real
``models--org--name/{blobs,snapshots/<commit>,refs/main}`` structure) under HF_HUB_CACHE, read by
the real huggingface_hub. Loading a repo id, the errors, the cache listing, deleting (and what is
refused), and the byte-progress adapter huggingface_hub drives through ``tqdm_class``.

The download path itself (listing, HEAD, GET with Range) runs against a small local stand-in for
the Hub's HTTP endpoints (HF_ENDPOINT), with huggingface_hub unpatched: byte progress through a
real download, and a download cut off in one call that resumes in the next."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from backends.files import hub_cache, sources
from backends.base import ModelSpec
from backends.errors import InvalidRequest, ModelLoadError, ModelNotFound
from tests.conftest import LiveServer, greedy, make_manager, make_services, make_settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "quantlab-test/smollm2-gguf"
CONFIG = b'{"model_type": "llama"}\n'


def add_repo(hub: Path, repo_id: str, files: dict[str, Path | bytes], commit: str = COMMIT) -> Path:
    """Put ``files`` (name -> a file to hard-link/copy, or bytes) into the hub cache the way
    huggingface_hub does: content in blobs/, snapshot entries as relative symlinks, refs/main.
    A big file is hard-linked (or copied), never symlinked: a symlinked blob resolves outside the
    cache, and deleting a blob must never reach the original."""
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, Path):
            blob = folder / "blobs" / hashlib.sha256(f"{name}:{content.stat().st_size}".encode()).hexdigest()
            if not blob.exists():
                try:
                    os.link(content, blob)
                except OSError:
                    shutil.copyfile(content, blob)
        else:
            blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
        entry = folder / "snapshots" / commit / name
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache at HF_HUB_CACHE, huggingface_hub in offline mode."""
    from huggingface_hub import constants

    path = tmp_path / "hf-hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import; the tests need it on
    assert sources.hub_cache_dir() == path
    return path


@pytest.fixture
def gguf_repo(hub, embedded_gguf) -> Path:
    return add_repo(hub, REPO, {"SmolLM2-135M-Instruct.Q4_1.gguf": embedded_gguf, "config.json": CONFIG})


@pytest.fixture
def app_cache(tmp_path) -> Path:
    """The app's --cache-dir with one GGUF-variant folder and one derived checkpoint."""
    cache = tmp_path / "quantlab-cache"
    (cache / "gguf" / "SmolLM2-abc123").mkdir(parents=True)
    (cache / "gguf" / "SmolLM2-abc123" / "SmolLM2.Q8_0.gguf").write_bytes(b"\0" * 3000)
    (cache / "hf" / "SmolLM2-def456").mkdir(parents=True)
    (cache / "hf" / "SmolLM2-def456" / "model.safetensors").write_bytes(b"\0" * 5000)
    (cache / "hf" / "SmolLM2-def456" / "config.json").write_bytes(b"{}")
    return cache


def ids(items: list[dict]) -> list[str]:
    return [i["id"] for i in items]


# --- loading a repo id ----------------------------------------------------------------------------


def test_repo_id_loads_offline_from_the_hub_cache_and_answers(gguf_repo, app_cache, embedded_gguf):
    manager = make_manager(cache_dir=app_cache)
    steps: list[tuple[float, str]] = []
    info = manager.load(ModelSpec(source=REPO, backend="llamacpp", n_ctx=512), lambda f, m: steps.append((f, m)))
    try:
        assert Path(info.source).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert Path(info.source).parent == gguf_repo / "snapshots" / COMMIT, "served from the hub cache's snapshot"
        assert info.quantization == "Q4_1"
        text, stats = manager.generate(greedy(8))
        assert text.strip() and stats["completion_tokens"] > 0
        messages = [m for _, m in steps]
        assert any(REPO in m and "in the local cache" in m for m in messages), messages
        fractions = [f for f, _ in steps]
        assert fractions == sorted(fractions), "load progress must not go backwards"
    finally:
        manager.unload()
    assert embedded_gguf.stat().st_size > 0


def test_repo_not_in_the_cache_offline_is_a_clear_model_not_found(hub, app_cache):
    manager = make_manager(cache_dir=app_cache)
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache") as err:
        manager.load(ModelSpec(source="quantlab-test/not-downloaded", backend="llamacpp"))
    assert "quantlab-test/not-downloaded" in str(err.value)
    assert "HF_HUB_OFFLINE" in str(err.value)
    assert manager.current is None and manager.last_error
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache"):
        sources.download_from_hub("quantlab-test/not-downloaded", "model.gguf")


def test_a_repo_with_several_gguf_files_needs_the_file_named(hub):
    add_repo(hub, "quantlab-test/many", {"m-Q4_K_M.gguf": b"GGUF-a", "m-Q8_0.gguf": b"GGUF-b",
                                         "extra/m-F16.gguf": b"GGUF-c", "README.md": b"# m\n"})
    with pytest.raises(ModelLoadError, match="3 GGUF files") as err:
        sources.download_from_hub("quantlab-test/many")
    for name in ("m-Q4_K_M.gguf", "m-Q8_0.gguf", "extra/m-F16.gguf"):
        assert name in str(err.value)
    assert sources.download_from_hub("quantlab-test/many", "m-Q8_0.gguf").read_bytes() == b"GGUF-b"
    assert sources.download_from_hub("quantlab-test/many", "m-F16.gguf").read_bytes() == b"GGUF-c"  # bare name
    assert sources.resolve("quantlab-test/many", gguf_file="m-Q4_K_M.gguf").name == "m-Q4_K_M.gguf"
    with pytest.raises(ModelNotFound, match="Cached GGUF files: .*m-Q4_K_M.gguf"):
        sources.download_from_hub("quantlab-test/many", "m-Q2_K.gguf")


def test_a_checkpoint_repo_resolves_to_its_snapshot_folder(hub):
    folder = add_repo(hub, "quantlab-test/ckpt", {"config.json": CONFIG, "model.safetensors": b"\0" * 64,
                                                  "tokenizer.json": b"{}"})
    # snapshot_download offline: the cached snapshot (no tree listing cached: returned as is)
    assert sources.resolve("quantlab-test/ckpt") == folder / "snapshots" / COMMIT


# --- listing and deleting -------------------------------------------------------------------------


def test_list_cached_shows_hub_repos_and_derived_models_with_sizes(gguf_repo, app_cache, embedded_gguf):
    items = {i["id"]: i for i in hub_cache.list_cached(app_cache)}
    repo = items["hub:" + REPO]
    assert repo["kind"] == "hub" and repo["repo_id"] == REPO and repo["repo_type"] == "model"
    assert repo["size_bytes"] == embedded_gguf.stat().st_size + len(CONFIG)
    assert repo["nb_files"] == 2
    assert repo["revisions"] == [COMMIT] and repo["refs"] == ["main"]
    assert repo["folder"] == str(gguf_repo) and repo["last_accessed"] > 0
    variant = items["gguf:SmolLM2-abc123/SmolLM2.Q8_0.gguf"]  # one row per GGUF variant
    assert variant["kind"] == "gguf-variant" and variant["size_bytes"] == 3000 and variant["nb_files"] == 1
    derived = items["hf:SmolLM2-def456"]
    assert derived["kind"] == "derived-checkpoint" and derived["size_bytes"] == 5002 and derived["nb_files"] == 2


def test_an_interrupted_first_download_is_listed_and_deletable(hub, app_cache):
    folder = hub / "models--quantlab-test--half"
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / "abc.incomplete").write_bytes(b"\0" * 1234)
    item = {i["id"]: i for i in hub_cache.list_cached(app_cache)}["hub:quantlab-test/half"]
    assert item["kind"] == "hub (download incomplete)" and item["size_bytes"] == 1234
    hub_cache.delete_cached("hub:quantlab-test/half", app_cache)
    assert not folder.exists()


def test_delete_cached_removes_a_hub_repo_and_leaves_the_original_file_alone(gguf_repo, app_cache, embedded_gguf):
    size = embedded_gguf.stat().st_size
    deleted = hub_cache.delete_cached("hub:" + REPO, app_cache)
    assert deleted["id"] == "hub:" + REPO and deleted["size_bytes"] > size
    assert not gguf_repo.exists()
    assert "hub:" + REPO not in ids(hub_cache.list_cached(app_cache))
    assert embedded_gguf.stat().st_size == size, "deleting the cache entry must not touch the linked original"
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache"):
        hub_cache.delete_cached("hub:" + REPO, app_cache)


def test_deleting_a_repo_leaves_a_repo_with_the_same_commit_alone(gguf_repo, hub, app_cache):
    """A duplicated repo shares its commit hashes: huggingface_hub's delete_revisions matches hashes
    across the whole cache, so deleting one repo must be narrowed to it."""
    twin = add_repo(hub, "quantlab-test/twin", {"config.json": CONFIG})  # same COMMIT as gguf_repo
    for _ in range(3):  # the scan's repo order is a frozenset's: try more than once
        hub_cache.delete_cached("hub:quantlab-test/twin", app_cache)
        assert not twin.exists() and gguf_repo.exists()
        assert "hub:" + REPO in ids(hub_cache.list_cached(app_cache))
        twin = add_repo(hub, "quantlab-test/twin", {"config.json": CONFIG})


def test_delete_cached_removes_derived_folders(app_cache):
    hub_cache.delete_cached("gguf:SmolLM2-abc123", app_cache)
    hub_cache.delete_cached("hf:SmolLM2-def456", app_cache)
    assert not (app_cache / "gguf" / "SmolLM2-abc123").exists() and not (app_cache / "hf" / "SmolLM2-def456").exists()
    assert (app_cache / "gguf").is_dir() and (app_cache / "hf").is_dir()
    assert [i for i in hub_cache.list_cached(app_cache) if not i["id"].startswith("hub:")] == []


def test_deleting_the_loaded_model_is_refused(gguf_repo, app_cache):
    manager = make_manager(cache_dir=app_cache)
    h = make_services(manager)
    manager.load(ModelSpec(source=REPO, backend="llamacpp", n_ctx=512))
    try:
        with pytest.raises(InvalidRequest, match="loaded now.*unload it first"):
            h.delete_cached("hub:" + REPO)
        assert gguf_repo.exists()
        assert manager.generate(greedy(4))[0].strip(), "the loaded model keeps serving"
        # the folder of a loaded GGUF variant or derived checkpoint is refused the same way
        loaded_variant = app_cache / "gguf" / "SmolLM2-abc123" / "SmolLM2.Q8_0.gguf"
        with pytest.raises(InvalidRequest, match="loaded now"):
            hub_cache.delete_cached("gguf:SmolLM2-abc123", app_cache, in_use=[str(loaded_variant)])
        assert loaded_variant.exists()
        assert "Deleted hf:SmolLM2-def456" in h.delete_cached("hf:SmolLM2-def456")  # not in use: fine
    finally:
        manager.unload()
    assert h.delete_cached("hub:" + REPO).startswith("Deleted hub:" + REPO)
    assert "hub:" + REPO not in ids(h.cached_models())


TRAVERSAL = ["gguf:../../outside", "hf:..", "gguf:.", "hf:SmolLM2-def456/../../../outside", "gguf:/etc",
             "hf:" + "..\\..\\outside", "../../outside", "/etc/passwd", "hub:../../outside", "hub:..",
             "cache:SmolLM2-abc123", "gguf:", "", "   "]


@pytest.mark.parametrize("item_id", TRAVERSAL)
def test_ids_outside_the_caches_are_refused(hub, app_cache, tmp_path, item_id):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "keep.txt").write_text("precious")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidRequest):
        hub_cache.delete_cached(item_id, app_cache)
    assert sorted(p for p in tmp_path.rglob("*")) == before, "nothing may be deleted"


def test_a_symlink_out_of_the_cache_is_refused(hub, app_cache, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"precious")
    (app_cache / "gguf" / "escape").symlink_to(outside, target_is_directory=True)
    assert "gguf:escape" not in ids(hub_cache.list_cached(app_cache))
    with pytest.raises(InvalidRequest, match="refusing"):
        hub_cache.delete_cached("gguf:escape", app_cache)
    assert (outside / "keep.bin").read_bytes() == b"precious"


# --- byte progress ---------------------------------------------------------------------------------


def test_the_progress_adapter_reports_increasing_fractions_ending_at_one():
    seen: list[tuple[float, str]] = []
    cls = sources.progress_tqdm(lambda f, m: seen.append((f, m)), "org/name/model.gguf", min_interval=0.0)
    # constructed as huggingface_hub's http_get does (disable=True: no TTY on a server)
    bar = cls(total=1000, initial=0, unit="B", unit_scale=True, desc="model.gguf",
              name="huggingface_hub.http_get", disable=True)
    for _ in range(10):
        bar.update(100)
    bar.close()
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert fractions[-1] == 1.0 and len(fractions) == 11  # at creation (0%) and after each update
    assert "org/name/model.gguf" in seen[-1][1] and "MiB" in seen[-1][1]


def test_the_progress_adapter_is_throttled_counts_resumed_bytes_and_ignores_transfer_bars():
    seen: list[tuple[float, str]] = []
    cls = sources.progress_tqdm(lambda f, m: seen.append((f, m)), "org/name", min_interval=60.0)
    # snapshot_download: a network-transfer twin and a file-count bar beside the bytes-written bar
    transfer = cls(total=0, unit="B", desc="Downloading bytes", name="huggingface_hub.snapshot_download.transfer",
                   disable=True)
    files = cls(total=2, desc="Fetching 2 files", disable=True)
    written = cls(total=0, initial=0, unit="B", desc="Reconstructing", name="huggingface_hub.snapshot_download",
                  disable=True)
    written.total = 2 * 2**20  # huggingface_hub grows the total as files start
    written.update(2**20 // 2)  # resumed part of a file, as huggingface_hub reports it
    for _ in range(1000):
        written.update(1024)
        transfer.update(10**9)  # would push the fraction past 1 if it were counted
    files.update(2)
    written.update(2 * 2**20 - written.quantlab_bytes)
    written.close()
    fractions = [f for f, _ in seen]
    assert len(fractions) <= 3, f"throttled to one update per interval plus the final one: {fractions}"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    seen.clear()
    resumed = sources.progress_tqdm(lambda f, m: seen.append((f, m)), "org/name/model.gguf", min_interval=0.0)
    bar = resumed(total=1000, initial=400, unit="B", name="huggingface_hub.http_get", disable=True)  # .incomplete had 400 bytes
    bar.update(600)
    assert [f for f, _ in seen] == [0.4, 1.0]
    assert "resumed" in seen[0][1]


def test_scaled_progress_maps_a_download_into_the_load_range():
    seen = []
    p = sources.scaled(lambda f, m: seen.append(f), 0.05, 0.15)
    for f in (0.0, 0.5, 1.0, 1.7):
        p(f, "x")
    assert seen == pytest.approx([0.05, 0.10, 0.15, 0.15])


# --- through the app: /load_model with a repo id, /cached_models, /delete_cached ------------------


def test_the_app_loads_a_repo_id_lists_and_deletes_through_the_api(gguf_repo, app_cache, hub):
    from gradio_client import Client

    add_repo(hub, "quantlab-test/two", {"a.gguf": b"GGUF-a", "b.gguf": b"GGUF-b"})
    with LiveServer(make_settings(cache_dir=app_cache)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert "Loaded" in c.predict(REPO, "llamacpp", "as file", api_name="/load_model")  # old 3-argument call
            with pytest.raises(Exception, match="2 GGUF files.*a.gguf, b.gguf"):
                c.predict("quantlab-test/two", "llamacpp", "as file", api_name="/load_model")
            loaded = c.predict(REPO, "llamacpp", "as file", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                               api_name="/load_model")
            assert "Loaded SmolLM2-135M-Instruct.Q4_1" in loaded
            items = {i["id"]: i for i in c.predict(api_name="/cached_models")}
            assert items["hub:" + REPO]["size_bytes"] > 90 * 2**20
            assert {"gguf:SmolLM2-abc123/SmolLM2.Q8_0.gguf", "hf:SmolLM2-def456", "hub:quantlab-test/two"} <= set(items)
            with pytest.raises(Exception, match="loaded now"):
                c.predict("hub:" + REPO, api_name="/delete_cached")
            with pytest.raises(Exception, match="not a folder of the cache directory"):
                c.predict("gguf:../../etc", api_name="/delete_cached")
            assert "Deleted hub:quantlab-test/two" in c.predict("hub:quantlab-test/two", api_name="/delete_cached")
            assert "Unloaded" in c.predict(api_name="/unload_model")
            assert "Deleted hub:" + REPO in c.predict("hub:" + REPO, api_name="/delete_cached")
            left = set(ids(c.predict(api_name="/cached_models")))
            assert left == {"gguf:SmolLM2-abc123/SmolLM2.Q8_0.gguf", "hf:SmolLM2-def456"}
            assert httpx.get(srv.url + "/health").status_code == 503
        finally:
            c.close()


# --- the real download path, against a local stand-in for the Hub ------------------------------------


class FakeHub:
    """The Hub endpoints huggingface_hub uses to download: the tree listing
    (GET /api/models/<repo>/tree/<rev>) and files (HEAD/GET /<repo>/resolve/<rev>/<file>, with
    Range). ``cut_after``: the first GET of a file sends that many bytes and drops the connection;
    until ``healthy`` is set again, later GETs get a 503 (a Hub outage)."""

    def __init__(self, repos: dict[str, dict[str, Path | bytes]]):
        self.repos = {repo: {name: (c if isinstance(c, Path) else c) for name, c in files.items()}
                      for repo, files in repos.items()}
        self.etags = {(repo, name): hashlib.sha256(self._read(c)).hexdigest()
                      for repo, files in self.repos.items() for name, c in files.items()}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_after: int | None = None
        self.healthy = True
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _read(content: Path | bytes) -> bytes:
        return content.read_bytes() if isinstance(content, Path) else content

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = req.path.split("?", 1)[0]
        self.requests.append((req.command, path, req.headers.get("Range")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            files = self.repos.get(m.group(1))
            if files is None:
                return self._error(req, 404, "RepoNotFound")
            body = json.dumps([{"type": "file", "path": n, "size": len(self._read(c)), "oid": self.etags[m.group(1), n]}
                               for n, c in files.items()]).encode()
            return self._send(req, 200, {"Content-Type": "application/json"}, body, head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m or m.group(1) not in self.repos:
            return self._error(req, 404, "RepoNotFound")
        repo, name = m.group(1), m.group(3)
        if name not in self.repos[repo]:
            return self._error(req, 404, "EntryNotFound")
        data = self._read(self.repos[repo][name])
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self.etags[repo, name]}"', "Accept-Ranges": "bytes"}
        if head:
            return self._send(req, 200, {**headers, "Content-Length": str(len(data))}, b"", head=True)
        if not self.healthy:
            return self._error(req, 503, None)
        start = int(re.fullmatch(r"bytes=(\d+)-", req.headers["Range"]).group(1)) if req.headers.get("Range") else 0
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.cut_after is not None:  # send part of it, then drop the connection
            self.healthy = False
            req.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                req.send_header(k, v)
            req.end_headers()
            req.wfile.write(body[: self.cut_after])
            req.wfile.flush()
            req.close_connection = True
            self.cut_after = None
            return None
        return self._send(req, status, headers, body, head=False)

    @staticmethod
    def _send(req, status, headers, body, head):
        req.send_response(status)
        headers = {**headers}
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            req.send_header(k, v)
        req.end_headers()
        if not head:
            req.wfile.write(body)

    def _error(self, req, status, code):
        body = json.dumps({"error": code or "unavailable"}).encode()
        headers = {"Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._send(req, status, headers, body, head=req.command == "HEAD")


@pytest.fixture
def online(hub, monkeypatch):
    """huggingface_hub online, against FakeHub at HF_ENDPOINT."""
    from huggingface_hub import constants

    def start(repos):
        fake = FakeHub(repos).__enter__()
        started.append(fake)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        return fake

    started: list[FakeHub] = []
    yield start
    for fake in started:
        fake.__exit__(None, None, None)


def test_an_online_download_reports_byte_progress_and_lands_in_the_cache(online, hub):
    payload = os.urandom(25 * 2**20 + 123)  # > 2 chunks of huggingface_hub's 10 MiB
    fake = online({"quantlab-test/online": {"m.Q4_K_M.gguf": payload, "README.md": b"# hi\n"}})
    seen: list[tuple[float, str]] = []
    path = sources.download_from_hub("quantlab-test/online", progress=lambda f, m: seen.append((f, m)))
    assert path.read_bytes() == payload
    assert path == hub / "models--quantlab-test--online" / "snapshots" / COMMIT / "m.Q4_K_M.gguf"
    byte_steps = [f for f, m in seen if m.startswith("Downloading")]
    assert byte_steps and byte_steps == sorted(byte_steps) and byte_steps[-1] == 1.0, seen
    assert "25.0 of 25.0 MiB" in [m for _, m in seen if m.startswith("Downloading")][-1]
    assert ("GET", "/api/models/quantlab-test/online/tree/main", None) in fake.requests
    assert "hub:quantlab-test/online" in ids(hub_cache.list_cached(hub / "none"))
    # the second time: from the cache, nothing downloaded
    fake.requests.clear()
    assert sources.download_from_hub("quantlab-test/online") == path
    assert not [r for r in fake.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_online_errors_are_clear(online):
    online({"quantlab-test/two": {"a.gguf": b"GGUF-a", "b.gguf": b"GGUF-b"}})
    with pytest.raises(ModelLoadError, match="2 GGUF files on the Hugging Face Hub.*a.gguf, b.gguf"):
        sources.download_from_hub("quantlab-test/two")
    with pytest.raises(ModelNotFound, match="No repository 'quantlab-test/nope' on the Hugging Face Hub"):
        sources.download_from_hub("quantlab-test/nope")
    with pytest.raises(ModelNotFound, match="No file 'c.gguf' in quantlab-test/two on the Hugging Face Hub"):
        sources.download_from_hub("quantlab-test/two", "c.gguf")


def test_a_cut_download_resumes_on_the_next_load_and_the_model_answers(online, hub, app_cache, embedded_gguf):
    name = embedded_gguf.name
    fake = online({REPO: {name: embedded_gguf, "config.json": CONFIG}})
    fake.cut_after = 40 * 2**20
    manager = make_manager(cache_dir=app_cache)
    with pytest.raises(ModelLoadError, match="Loading it again resumes the download"):
        manager.load(ModelSpec(source=REPO, backend="llamacpp", n_ctx=512))
    partials = list((hub / ("models--" + REPO.replace("/", "--")) / "blobs").glob("*.resumable.incomplete"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size <= 40 * 2**20
    kept = partials[0].stat().st_size
    listed = {i["id"]: i for i in hub_cache.list_cached(app_cache)}["hub:" + REPO]
    assert listed["kind"] == "hub (download incomplete)" and listed["size_bytes"] >= kept

    fake.healthy = True
    fake.requests.clear()
    steps: list[tuple[float, str]] = []
    info = manager.load(ModelSpec(source=REPO, backend="llamacpp", n_ctx=512), lambda f, m: steps.append((f, m)))
    try:
        gets = [r for r in fake.requests if r[0] == "GET" and r[1].endswith("/" + name)]
        assert gets == [("GET", f"/{REPO}/resolve/main/{name}", f"bytes={kept}-")], fake.requests
        assert any("resumed at" in m for _, m in steps), steps
        fractions = [f for f, _ in steps]
        assert fractions == sorted(fractions)
        blob = Path(info.source).resolve()
        assert blob.stat().st_size == embedded_gguf.stat().st_size
        assert hashlib.sha256(blob.read_bytes()).digest() == hashlib.sha256(embedded_gguf.read_bytes()).digest()
        assert manager.generate(greedy(6))[0].strip()
    finally:
        manager.unload()
    assert not list(blob.parent.glob("*.incomplete"))


def test_the_model_tab_lists_and_deletes_cached_models_in_a_browser(gguf_repo, app_cache, hub):
    """Open the accordion, pick a row, press Delete: the row goes, the files go."""
    from tests.test_browser import ARGS, CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    add_repo(hub, "quantlab-test/spare", {"config.json": CONFIG})
    with LiveServer(make_settings(cache_dir=app_cache, request_log="")) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.set_default_timeout(60_000)
            page.goto(srv.url)
            page.get_by_role("tab", name="Model").click()
            assert page.locator("#gguf-file textarea, #gguf-file input").count() == 1
            page.get_by_text("Downloaded and derived models").click()
            table = page.locator("#cache-table")
            table.get_by_text("hub:quantlab-test/spare").wait_for()
            for item in ("hub:" + REPO, "gguf:SmolLM2-abc123/SmolLM2.Q8_0.gguf", "hf:SmolLM2-def456"):
                assert table.get_by_text(item).count() >= 1
            table.get_by_text("hub:quantlab-test/spare").click()
            pick = page.locator("#cache-pick input")
            page.wait_for_function("document.querySelector('#cache-pick input').value === 'hub:quantlab-test/spare'")
            if os.environ.get("QUANTLAB_SCREENSHOTS"):
                page.screenshot(path=str(Path(os.environ["QUANTLAB_SCREENSHOTS"]) / "model-cache.png"), full_page=True)
            page.click("#cache-delete")
            page.wait_for_function(
                "(document.querySelector('#cache-status textarea')?.value || '').startsWith('Deleted hub:quantlab-test/spare')")
            page.wait_for_function("!document.querySelector('#cache-table').innerText.includes('quantlab-test/spare')")
            assert table.get_by_text("hub:" + REPO).count() >= 1
            assert pick.input_value() in ("", "hub:quantlab-test/spare")
        finally:
            browser.close()
    assert not (hub / "models--quantlab-test--spare").exists() and gguf_repo.exists()
