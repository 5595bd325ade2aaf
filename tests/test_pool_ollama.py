"""Ollama's listing on the model pool: /api/tags names every model of --models-dir (loaded or not, as
Ollama lists every pulled model), /api/ps the ones loaded now, and a chat naming one with Ollama's
``:latest`` tag loads and answers it."""

from __future__ import annotations

import shutil

import ollama
import pytest

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(tmp_path_factory, embedded_gguf, cache_dir):
    d = tmp_path_factory.mktemp("models")
    shutil.copyfile(embedded_gguf, d / "alpha.gguf")
    shutil.copyfile(embedded_gguf, d / "beta.gguf")
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=d, models_max=2, parallel=1)) as srv:
        yield srv


def test_tags_list_the_pool_and_ps_what_is_loaded(pool):
    lama = ollama.Client(host=pool.url, timeout=300)
    assert {m.model for m in lama.list().models} >= {"alpha:latest", "beta:latest"}
    assert [m.model for m in lama.ps().models] == []
    reply = lama.chat(model="alpha:latest", messages=[{"role": "user", "content": "Say hello."}],
                      options={"temperature": 0, "num_predict": 8})
    assert reply.done and reply.message.content
    assert [m.model for m in lama.ps().models] == ["alpha:latest"]
    listed = {m.model: m for m in lama.list().models}
    assert listed["alpha:latest"].size > 0 and listed["beta:latest"].size == 0  # loaded: its memory
