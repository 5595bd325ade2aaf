"""Models from the Hugging Face Hub, offline: a hand-built hub-cache layout (the real
``models--org--name/{blobs,snapshots/<commit>,refs/main}`` structure) under HF_HUB_CACHE, read by
the real huggingface_hub. Loading a repo id, the errors, the cache listing, deleting (and what is
refused), and the byte-progress adapter huggingface_hub drives through ``tqdm_class``."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import httpx
import pytest

from backends import hub_cache, sources
from backends.base import ModelSpec
from backends.errors import InvalidRequest, ModelLoadError, ModelNotFound
from backends.manager import ModelManager
from tests.conftest import LiveServer, greedy, make_settings

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
    manager = ModelManager(cache_dir=app_cache)
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
    manager = ModelManager(cache_dir=app_cache)
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
    variants = items["gguf:SmolLM2-abc123"]
    assert variants["kind"] == "gguf-variants" and variants["size_bytes"] == 3000 and variants["nb_files"] == 1
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


def test_delete_cached_removes_derived_folders(app_cache):
    hub_cache.delete_cached("gguf:SmolLM2-abc123", app_cache)
    hub_cache.delete_cached("hf:SmolLM2-def456", app_cache)
    assert not (app_cache / "gguf" / "SmolLM2-abc123").exists() and not (app_cache / "hf" / "SmolLM2-def456").exists()
    assert (app_cache / "gguf").is_dir() and (app_cache / "hf").is_dir()
    assert [i for i in hub_cache.list_cached(app_cache) if not i["id"].startswith("hub:")] == []


def test_deleting_the_loaded_model_is_refused(gguf_repo, app_cache):
    from ui.handlers import Handlers

    manager = ModelManager(cache_dir=app_cache)
    h = Handlers(manager)
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
            assert {"gguf:SmolLM2-abc123", "hf:SmolLM2-def456", "hub:quantlab-test/two"} <= set(items)
            with pytest.raises(Exception, match="loaded now"):
                c.predict("hub:" + REPO, api_name="/delete_cached")
            with pytest.raises(Exception, match="not a folder of the cache directory"):
                c.predict("gguf:../../etc", api_name="/delete_cached")
            assert "Deleted hub:quantlab-test/two" in c.predict("hub:quantlab-test/two", api_name="/delete_cached")
            assert "Unloaded" in c.predict(api_name="/unload_model")
            assert "Deleted hub:" + REPO in c.predict("hub:" + REPO, api_name="/delete_cached")
            left = set(ids(c.predict(api_name="/cached_models")))
            assert left == {"gguf:SmolLM2-abc123", "hf:SmolLM2-def456"}
            assert httpx.get(srv.url + "/health").status_code == 503
        finally:
            c.close()
