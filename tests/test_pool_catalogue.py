"""Which names a --models-dir serves (no model is loaded here: the names, their specs and the refusals)."""

from __future__ import annotations

import pytest

from backends.base import ModelSpec
from backends.errors import InvalidRequest, ModelNotFound
from backends.pool import Catalogue

BASE = ModelSpec(source="embedded", backend="llamacpp", quantization="Q8_0", n_ctx=1024, parallel=2)


def touch(path, data=b"GGUF"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_names_are_files_folders_and_embedded(tmp_path):
    root = tmp_path / "models"
    touch(root / "alpha.gguf")
    touch(root / "big-00001-of-00002.gguf")
    touch(root / "big-00002-of-00002.gguf")  # a later part of a split file: not a model of its own
    touch(root / "mmproj-alpha.gguf")  # a multimodal projector: not a model
    touch(root / ".hidden.gguf")
    touch(root / "notes.txt", b"x")
    touch(root / "family" / "q4.gguf")
    touch(root / "ckpt" / "config.json", b"{}")
    outside = touch(tmp_path / "outside.gguf")
    (root / "escape.gguf").symlink_to(outside)  # a link out of the folder is not served
    (root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    cat = Catalogue(root, BASE)
    entries = {e.name: e for e in cat.entries()}
    assert sorted(entries) == ["alpha", "big-00001-of-00002", "ckpt", "embedded", "family/q4"]
    assert entries["alpha"].spec.source == str((root / "alpha.gguf").resolve())
    assert entries["alpha"].spec.served_name == "alpha" and entries["alpha"].spec.n_ctx == 1024
    assert entries["alpha"].spec.quantization == "Q8_0"  # the server's own load options
    assert entries["ckpt"].spec.backend == "transformers" and entries["ckpt"].spec.quantization is None
    assert entries["embedded"].spec.source == "embedded"
    assert cat.find("alpha.gguf").name == "alpha"


@pytest.mark.parametrize("name", ["../outside", "escape", "linkdir/outside", "/etc/passwd", "alpha/../alpha",
                                  "nope", "big-00002-of-00002", "ALPHA"])
def test_other_names_are_not_found(tmp_path, name):
    root = tmp_path / "models"
    touch(root / "alpha.gguf")
    touch(root / "big-00002-of-00002.gguf")
    touch(tmp_path / "outside.gguf")
    (root / "escape.gguf").symlink_to(tmp_path / "outside.gguf")
    (root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ModelNotFound, match="does not exist on this server"):
        Catalogue(root, BASE).find(name)


@pytest.mark.parametrize("name", ["", "   ", "x" * 600, None])
def test_empty_or_huge_names_are_bad_requests(tmp_path, name):
    with pytest.raises(InvalidRequest):
        Catalogue(tmp_path, BASE).find(name)


def test_a_missing_folder_serves_embedded_only(tmp_path):
    assert [e.name for e in Catalogue(tmp_path / "absent", BASE).entries()] == ["embedded"]
