"""A checkpoint folder in --models-dir is a model name too: loaded with transformers on demand and
answered by name through the real openai client, beside a GGUF file of the same folder."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow
pytest.importorskip("torch")


def test_a_checkpoint_folder_answers_by_name(tmp_path, embedded_gguf, cache_dir):
    from backends.files.hf_convert import hf_checkpoint_from_gguf

    models = tmp_path / "models"
    shutil.copytree(hf_checkpoint_from_gguf(embedded_gguf, cache_dir), models / "smol-hf")
    shutil.copyfile(embedded_gguf, models / "smol.gguf")
    with LiveServer(make_settings(cache_dir=cache_dir, models_dir=models, parallel=1)) as srv:
        rows = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
        assert rows["smol-hf"]["backend"] == "transformers" and rows["smol-hf"]["status"] == "unloaded"
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        for name in ("smol-hf", "smol"):
            reply = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hello."}],
                                              max_tokens=4, temperature=0)
            assert reply.model == name and reply.choices[0].message.content
        rows = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
        assert rows["smol-hf"]["status"] == rows["smol"]["status"] == "loaded"
        assert rows["smol-hf"]["memory_mib"] > 0
