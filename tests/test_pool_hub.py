"""Models in the Hugging Face cache are pool names too (their repo id): listed in GET /v1/models and
answered by name through the openai client, loaded from the cache (offline)."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_repo(hub: object, repo_id: str, gguf) -> None:
    """A model repo as huggingface_hub caches it: refs/main -> snapshots/<commit>/<file> (-> blobs)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    blob = repo / "blobs" / "tiny-blob"
    shutil.copyfile(gguf, blob)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "tiny-Q4_1.gguf").symlink_to(blob)


def test_a_hub_cache_repo_is_served_by_its_repo_id(tmp_path, monkeypatch, embedded_gguf, cache_dir):
    hub = tmp_path / "hub"
    fake_hub_repo(hub, "test-org/tiny-gguf", embedded_gguf)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models").mkdir()
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=tmp_path / "models")) as srv:
        rows = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
        assert rows["test-org/tiny-gguf"]["status"] == "unloaded" and rows["test-org/tiny-gguf"]["kind"] == "hub"
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        reply = c.chat.completions.create(model="test-org/tiny-gguf", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2)
        assert reply.model == "test-org/tiny-gguf"
        rows = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
        assert rows["test-org/tiny-gguf"]["status"] == "loaded" and rows["test-org/tiny-gguf"]["memory_mib"] > 0
        with pytest.raises(openai.NotFoundError):  # a repo not in the cache is no name here
            c.chat.completions.create(model="test-org/absent", messages=[{"role": "user", "content": "Hi"}])
