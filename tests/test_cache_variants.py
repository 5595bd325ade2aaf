"""The cache list has one row per GGUF variant (load or delete each on its own, ids stable), and a
failed conversion leaves nothing behind (real llama.cpp quantizer on the embedded model)."""

from __future__ import annotations

import shutil

import pytest

from backends.files import gguf, hub_cache
from backends.errors import InvalidRequest, ModelLoadError


def derived(items: list[dict]) -> dict[str, dict]:
    return {i["id"]: i for i in items if i["id"].startswith("gguf:")}


def test_each_gguf_variant_is_its_own_row_to_load_or_delete(embedded_gguf, tmp_path):
    cache = tmp_path / "cache"
    q8 = gguf.gguf_variant(embedded_gguf, "Q8_0", cache)
    q4 = gguf.gguf_variant(embedded_gguf, "Q4_0", cache)
    folder = q8.parent.name
    rows = derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub"))
    ids = {f"gguf:{folder}/{p.name}" for p in (q8, q4, q8.with_name(f"{embedded_gguf.stem}.F16.gguf"))}
    assert set(rows) == ids, "one row per variant (the F16 they are made from included), no folder row"
    r8 = rows[f"gguf:{folder}/{q8.name}"]
    assert r8["kind"] == "gguf-variant" and r8["quantization"] == "Q8_0" and r8["size_bytes"] == q8.stat().st_size
    assert r8["source"] == embedded_gguf.name and r8["source_type"] == "Q4_1" and "already quantized" in r8["note"]
    assert r8["tensors"].startswith("Q8_0: 211 q8_0") and r8["bpw"] > 8
    assert r8["load"] == {"model": str(q8), "backend": "llamacpp", "quantization": "as file"}
    # ids are stable: listing again gives the same ids
    assert set(derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub"))) == ids
    # the loaded variant is refused; another one is deleted alone
    with pytest.raises(InvalidRequest, match="loaded now"):
        hub_cache.delete_cached(f"gguf:{folder}/{q8.name}", cache, in_use=[str(q8)])
    hub_cache.delete_cached(f"gguf:{folder}/{q4.name}", cache, in_use=[str(q8)])
    assert not q4.exists() and q8.exists()
    assert set(derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub"))) == ids - {f"gguf:{folder}/{q4.name}"}
    # deleting the last variant removes the folder (and the source record with it)
    for item_id in list(derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub"))):
        hub_cache.delete_cached(item_id, cache)
    assert not q8.parent.exists()
    assert derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub")) == {}


def test_variant_ids_that_leave_the_folder_are_refused(embedded_gguf, tmp_path):
    cache = tmp_path / "cache"
    q8 = gguf.gguf_variant(embedded_gguf, "Q8_0", cache)
    folder = q8.parent.name
    for bad in (f"gguf:{folder}/../x", f"gguf:{folder}/..", f"gguf:../{folder}", f"gguf:{folder}/",
                f"gguf:{folder}/a/b"):
        with pytest.raises(InvalidRequest):
            hub_cache.delete_cached(bad, cache)
    assert q8.exists()


def test_a_failed_quantization_leaves_no_folder_and_no_row(embedded_gguf, tmp_path):
    cache = tmp_path / "cache"
    broken = tmp_path / "broken.gguf"
    with open(embedded_gguf, "rb") as src, open(broken, "wb") as dst:
        dst.write(src.read(2_000_000))  # a valid header, the tensor data cut short
    with pytest.raises(ModelLoadError, match="could not quantize"):
        gguf.quantize_gguf(broken, cache / "gguf" / "broken-x" / "broken.Q8_0.gguf", "Q8_0")
    assert not (cache / "gguf" / "broken-x").exists()
    assert derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub")) == {}


def test_an_empty_folder_left_by_a_crash_is_not_listed(tmp_path):
    cache = tmp_path / "cache"
    (cache / "gguf" / "left-behind").mkdir(parents=True)
    assert derived(hub_cache.list_cached(cache, hub_cache=tmp_path / "no-hub")) == {}
    shutil.rmtree(cache)
