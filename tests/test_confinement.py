"""On an exposed server (--listen), every endpoint that takes a path keeps it inside --models-dir: not
only ``..`` and absolute paths, but a sibling folder whose name starts like the models folder
(``models-private`` beside ``models``) and symlinks out of it (a file, a folder, a file inside a model
folder). Each is refused with a clear message through the real gradio_client, and nothing is loaded,
read, converted or deleted."""

from __future__ import annotations

import os
import shutil

import pytest

from backends.base import ModelSpec
from backends.files.sources import embedded_model_path
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow
REFUSED = "inside the models directory"
SECRET = "private notes: the launch code is 0000\n"


def place(src, dst) -> None:
    """A real copy of ``src`` at ``dst`` (a hard link when the filesystem allows): a loadable model that
    is not the embedded file itself, which every server may open."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    base = tmp_path_factory.mktemp("confine")
    models, private = base / "models", base / "models-private"
    models.mkdir()
    private.mkdir()
    place(embedded_model_path(), private / "x.gguf")
    (private / "secret.txt").write_text(SECRET * 50)
    ckpt = private / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    # inside models/: links that lead out of it
    (models / "inner.gguf").symlink_to(private / "x.gguf")
    (models / "notes.txt").symlink_to(private / "secret.txt")
    (models / "linkdir").symlink_to(private, target_is_directory=True)
    (models / "ckpt-link").symlink_to(ckpt, target_is_directory=True)
    folder = models / "folder"
    folder.mkdir()
    (folder / "m.gguf").symlink_to(private / "x.gguf")
    settings = make_settings(listen=True, models_dir=models)
    with LiveServer(settings) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512))
        srv.models, srv.private = models, private
        from gradio_client import Client

        srv.gc = Client(srv.url, verbose=False)
        try:
            yield srv
        finally:
            srv.gc.close()


def refused(srv, api_name: str, *args) -> str:
    """The error message gradio_client raises for this call (the test fails if the call succeeds)."""
    with pytest.raises(Exception) as info:
        srv.gc.predict(*args, api_name=api_name)
    return str(info.value)


def escapes(srv) -> dict[str, str]:
    p = srv.private
    return {
        "sibling prefix, relative": "../models-private/x.gguf",
        "sibling prefix, absolute": str(p / "x.gguf"),
        "symlinked file": "inner.gguf",
        "symlinked folder": "linkdir/x.gguf",
        "folder holding a link out": "folder",
    }


@pytest.mark.parametrize("case", ["sibling prefix, relative", "sibling prefix, absolute", "symlinked file",
                                  "symlinked folder", "folder holding a link out"])
def test_load_model_refuses_paths_that_leave_the_models_dir(exposed, case):
    before = exposed.manager.current
    message = refused(exposed, "/load_model", escapes(exposed)[case], "llamacpp", "as file")
    assert REFUSED in message, message
    assert exposed.manager.current == before and exposed.manager.loading is None  # the old model still serves
    assert "x.gguf" not in exposed.gc.predict(api_name="/model_status")


def test_load_model_gguf_file_cannot_pick_a_link_out_of_the_models_dir(exposed):
    for model, gguf_file in (("folder", "m.gguf"), (".", "../models-private/x.gguf"), ("linkdir", "x.gguf")):
        message = refused(exposed, "/load_model", model, "llamacpp", "as file", "", "", gguf_file)
        assert REFUSED in message or "No GGUF file" in message, (model, gguf_file, message)
        assert "x.gguf" not in exposed.gc.predict(api_name="/model_status")


@pytest.mark.parametrize("text_path", ["../models-private/secret.txt", "notes.txt", "linkdir/secret.txt"])
def test_evaluate_text_path_is_confined(exposed, text_path):
    message = refused(exposed, "/evaluate", ["llamacpp:Q4_1"], text_path)
    assert "inside the models directory" in message, message
    assert "launch code" not in message


@pytest.mark.parametrize("model", ["../models-private/x.gguf", "inner.gguf", "folder"])
def test_compare_and_evaluate_models_are_confined(exposed, model):
    assert REFUSED in refused(exposed, "/compare", "Hi", ["llamacpp:Q4_1"], model, 4)
    assert REFUSED in refused(exposed, "/evaluate", ["llamacpp:Q4_1"], "", 256, model)


@pytest.mark.parametrize("model", ["../models-private/ckpt", "ckpt-link", "linkdir/ckpt"])
def test_convert_to_gguf_is_confined(exposed, model):
    assert REFUSED in refused(exposed, "/convert_to_gguf", model, [])
    assert not list((exposed.manager.cache_dir or exposed.settings.cache_dir).rglob("ckpt*.gguf"))


def test_delete_cached_refuses_ids_that_leave_the_cache(exposed, cache_dir):
    sibling = cache_dir.parent / (cache_dir.name + "-private")
    (sibling / "gguf" / "keep").mkdir(parents=True, exist_ok=True)
    (sibling / "gguf" / "keep" / "a.gguf").write_bytes(b"GGUF")
    escape = cache_dir / "gguf" / "escape-link"
    escape.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(escape):
        escape.symlink_to(sibling / "gguf" / "keep", target_is_directory=True)
    try:
        for item_id in (f"gguf:../../{sibling.name}/gguf/keep", "gguf:escape-link", "gguf:escape-link/a.gguf",
                        f"hf:../{sibling.name}"):
            message = refused(exposed, "/delete_cached", item_id)
            assert "refusing" in message or "not a folder of the cache" in message or "not a file" in message, message
        assert (sibling / "gguf" / "keep" / "a.gguf").exists()
    finally:
        escape.unlink()
        shutil.rmtree(sibling)


@pytest.mark.parametrize("path", ["../models-private/secret.txt", "notes.txt", "linkdir/secret.txt"])
def test_imatrix_calibration_and_held_out_texts_are_confined(exposed, path):
    assert REFUSED in refused(exposed, "/imatrix", "embedded", path)
    message = refused(exposed, "/imatrix_gain", "embedded", ["Q2_K"], path)
    assert REFUSED in message and "launch code" not in message


@pytest.mark.parametrize("model", ["../models-private/x.gguf", "inner.gguf", "folder"])
def test_imatrix_and_fit_models_are_confined(exposed, model):
    assert REFUSED in refused(exposed, "/imatrix", model, "")
    assert REFUSED in refused(exposed, "/fit", "2048", 2048, 1, model)
