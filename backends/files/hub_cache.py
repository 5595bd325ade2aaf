"""What is on disk: models in the Hugging Face cache and this app's derived models, listed and deleted.

Two places hold model files:

- the Hugging Face Hub cache (``sources.hub_cache_dir()``: HF_HUB_CACHE / HF_HOME), where Hub
  repos are downloaded; scanned and deleted through huggingface_hub's own cache manager
  (``scan_cache_dir``, ``delete_revisions(...).execute()``). Model repos only: datasets and
  Spaces other tools keep there are none of this app's business.
- the app's cache dir (``--cache-dir``): GGUF variants under ``gguf/<source>-<key>/`` and
  transformers checkpoints derived from GGUF files under ``hf/<name>-<key>/``.

Every item has an ``id``: ``hub:org/name``, ``gguf:<folder>/<file>.gguf`` (one row per GGUF variant,
with its quantization, source and measured bits per weight) or ``hf:<folder>``; ``gguf:<folder>``
still deletes every variant of one source. Empty folders (left by a crash) are not listed. Deleting checks
the id names a real item inside its cache (no path traversal, no symlink out) and refuses the
folder the loaded model lives in. No network, no gradio here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from backends.files import sources
from backends.errors import InvalidRequest, ModelNotFound

DERIVED_KINDS = {"gguf": "gguf-variants", "hf": "derived-checkpoint"}
GGUF_VARIANT_KIND = "gguf-variant"
HUB_PREFIX = "hub:"


def list_cached(cache_dir: Path | None = None, hub_cache: Path | None = None) -> list[dict]:
    """Every cached model, most recently used first: {id, kind, repo_id, repo_type, size_bytes,
    nb_files, last_accessed (epoch seconds), revisions (commit hashes), refs, folder}. The location
    is "folder", not "path": Gradio takes any {"path": str} in an API answer for a file to serve."""
    items = _hub_items(hub_cache or sources.hub_cache_dir()) + _derived_items(cache_dir or sources.default_cache_dir())
    return sorted(items, key=lambda i: i["last_accessed"] or 0.0, reverse=True)


def servable_repos(hub_cache: Path | None = None) -> list[tuple[str, str]]:
    """(repo id, backend) of every complete model repo in the Hugging Face cache that loads as is: one
    holding a GGUF file (llamacpp) or a checkpoint (a config.json: transformers). The model pool
    serves them by their repo id."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    folder = hub_cache or sources.hub_cache_dir()
    if not folder.is_dir():
        return []
    try:
        info = scan_cache_dir(folder)
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or _incomplete_bytes(repo.repo_path)[0]:
            continue
        names = {f.file_name for r in repo.revisions for f in r.files}
        if any(n.lower().endswith(".gguf") for n in names):
            found.append((repo.repo_id, "llamacpp"))
        elif "config.json" in names:
            found.append((repo.repo_id, "transformers"))
    return sorted(found)


def delete_cached(item_id: str, cache_dir: Path | None = None, in_use: Iterable[str] = (),
                  hub_cache: Path | None = None) -> dict:
    """Delete one item by its id; return its listing entry. ``in_use``: paths of loaded models,
    whose folders are refused."""
    item_id = (item_id or "").strip()
    if not item_id:
        raise InvalidRequest("Choose a cached model to delete (an id from the list).", "item_id")
    hub_cache = hub_cache or sources.hub_cache_dir()
    cache_dir = cache_dir or sources.default_cache_dir()
    kind, sep, name = item_id.partition(":")
    if sep and kind in DERIVED_KINDS:
        return _delete_derived(kind, name, cache_dir, in_use)
    repo_id = name if kind == "hub" else item_id  # "hub:org/name", or a bare "org/name"
    if (sep and kind != "hub") or not sources._REPO_ID.match(repo_id):
        raise InvalidRequest(f"{item_id!r} is not a cached model id: use an id from the list "
                             "(hub:org/name, gguf:<folder> or hf:<folder>).", "item_id")
    return _delete_hub(repo_id, hub_cache, in_use)


# --- the Hugging Face cache ----------------------------------------------------------------------


def _hub_items(hub_cache: Path) -> list[dict]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    if not hub_cache.is_dir():
        return []
    try:
        info = scan_cache_dir(hub_cache)
    except CacheNotFound:
        return []
    items = []
    seen = set()
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        seen.add(repo.repo_path.name)
        partial, partial_files = _incomplete_bytes(repo.repo_path)
        items.append({
            "id": HUB_PREFIX + repo.repo_id,
            "kind": "hub" if not partial else "hub (download incomplete)",
            "repo_id": repo.repo_id,
            "repo_type": repo.repo_type,
            "size_bytes": int(repo.size_on_disk) + partial,
            "nb_files": int(repo.nb_files) + partial_files,
            "last_accessed": float(repo.last_accessed),
            "revisions": sorted(r.commit_hash for r in repo.revisions),
            "refs": sorted(ref for r in repo.revisions for ref in r.refs),
            "folder": str(repo.repo_path),
        })
    # A first download that was interrupted leaves blobs/*.incomplete and no snapshot yet:
    # huggingface_hub reports it as corrupted; list it so it can be resumed (load it) or deleted.
    for folder in sorted(hub_cache.glob("models--*")):
        if folder.name in seen or not folder.is_dir() or folder.is_symlink():
            continue
        repo_id = folder.name[len("models--"):].replace("--", "/")
        items.append(_folder_item(HUB_PREFIX + repo_id, "hub (download incomplete)", repo_id, "model", folder))
    return items


def _folder_item(item_id: str, kind: str, repo_id: str, repo_type: str, folder: Path) -> dict:
    """A listing row for a plain folder (no Hub revisions)."""
    size, count, last = _folder_usage(folder)
    return {"id": item_id, "kind": kind, "repo_id": repo_id, "repo_type": repo_type, "size_bytes": size,
            "nb_files": count, "last_accessed": last, "revisions": [], "refs": [], "folder": str(folder)}


def _incomplete_bytes(repo_path: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in (repo_path / "blobs").glob("*.incomplete") if p.is_file()]
    return sum(sizes), len(sizes)


def _delete_hub(repo_id: str, hub_cache: Path, in_use: Iterable[str]) -> dict:
    item = next((i for i in _hub_items(hub_cache) if i["repo_id"] == repo_id), None)
    if item is None:
        raise ModelNotFound(f"{repo_id} is not in the Hugging Face cache ({hub_cache}).")
    folder = Path(item["folder"])
    _refuse_if_in_use(folder, in_use, repo_id)
    if item["revisions"]:
        import dataclasses

        from huggingface_hub import scan_cache_dir

        # All revisions of the repo: huggingface_hub deletes the whole models--org--name folder. The scan
        # is narrowed to this repo first: delete_revisions matches commit hashes across every cached repo
        # (a duplicated repo shares its commits), and would take the first repo holding the hash.
        info = scan_cache_dir(hub_cache)
        mine = frozenset(r for r in info.repos if r.repo_path == folder)
        dataclasses.replace(info, repos=mine).delete_revisions(*item["revisions"]).execute()
    if folder.exists():  # no revision (interrupted first download), or leftovers the scan did not cover
        _check_inside(folder, hub_cache, repo_id)
        shutil.rmtree(folder)
    return item


# --- the app's derived models --------------------------------------------------------------------


def _derived_items(cache_dir: Path) -> list[dict]:
    items = []
    for sub, kind in DERIVED_KINDS.items():
        base = cache_dir / sub
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if folder.is_symlink() or not folder.is_dir() or not any(folder.iterdir()):
                continue
            if sub == "gguf":
                items += _gguf_items(folder)
                continue
            label = kind if ".tmp-" not in folder.name else kind + " (unfinished)"
            item = _folder_item(f"{sub}:{folder.name}", label, folder.name, kind, folder)
            item["load"] = {"model": str(folder), "backend": "transformers"}
            items.append(item)
    return items


def _gguf_items(folder: Path) -> list[dict]:
    """One row per file of a source's variant folder: each GGUF variant to load or delete on its
    own, and any unfinished conversion (to delete)."""
    from backends.files.gguf import source_of
    from backends.files.provenance import provenance

    rec = None
    items = []
    for f in sorted(folder.iterdir()):
        if f.is_symlink() or not f.is_file() or f.name.startswith("quantlab-source.json"):
            continue
        st = f.stat()
        unfinished = ".tmp-" in f.name or f.suffix != ".gguf"
        item = {"id": f"gguf:{folder.name}/{f.name}", "kind": GGUF_VARIANT_KIND + (" (unfinished)" if unfinished else ""),
                "repo_id": f.name, "repo_type": DERIVED_KINDS["gguf"], "size_bytes": st.st_size, "nb_files": 1,
                "last_accessed": max(st.st_atime, st.st_mtime), "revisions": [], "refs": [], "folder": str(folder)}
        if not unfinished:
            rec = rec or source_of(f) or {}
            quant = f.stem.rsplit(".", 1)[-1]
            prov = provenance(f, quant)
            item.update(quantization=quant, source=rec.get("source_name") or prov["source_name"],
                        source_type=prov["source_type"], bpw=prov["bpw"], tensors=prov["tensors"], note=prov["note"],
                        warning=prov["warning"], load={"model": str(f), "backend": "llamacpp", "quantization": "as file"})
        items.append(item)
    return items


def _delete_derived(sub: str, name: str, cache_dir: Path, in_use: Iterable[str]) -> dict:
    item_id = f"{sub}:{name}"
    folder_name, slash, file_name = name.partition("/")
    if sub == "gguf" and slash:
        return _delete_variant(folder_name, file_name, cache_dir, in_use)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise InvalidRequest(f"{item_id!r} is not a folder of the cache directory: use an id from the list.", "item_id")
    base = cache_dir / sub
    folder = base / name
    if not os.path.lexists(folder):
        raise ModelNotFound(f"{item_id} is not in the cache directory ({cache_dir}).")
    if folder.is_symlink() or not folder.is_dir():
        raise InvalidRequest(f"{item_id} is not a folder of the cache directory: refusing to delete it.", "item_id")
    _check_inside(folder, base, item_id)
    _refuse_if_in_use(folder, in_use, item_id)
    if sub == "gguf":
        size, count, last = _folder_usage(folder)
        item = {"id": item_id, "kind": DERIVED_KINDS[sub], "repo_id": name, "repo_type": DERIVED_KINDS[sub],
                "size_bytes": size, "nb_files": count, "last_accessed": last, "revisions": [], "refs": [],
                "folder": str(folder)}
    else:
        item = next(i for i in _derived_items(cache_dir) if i["id"] == item_id)
    shutil.rmtree(folder)
    return item


def _delete_variant(folder_name: str, file_name: str, cache_dir: Path, in_use: Iterable[str]) -> dict:
    """Delete one GGUF variant (``gguf:<folder>/<file>``); the folder goes with its last variant."""
    item_id = f"gguf:{folder_name}/{file_name}"
    bad = [n for n in (folder_name, file_name) if not n or n in (".", "..") or any(c in n for c in "/\\\0")]
    if bad:
        raise InvalidRequest(f"{item_id!r} is not a folder of the cache directory (nor a variant in one): use an id "
                             "from the list.", "item_id")
    base = cache_dir / "gguf"
    folder = base / folder_name
    path = folder / file_name
    if not os.path.lexists(path):
        raise ModelNotFound(f"{item_id} is not in the cache directory ({cache_dir}).")
    if folder.is_symlink() or path.is_symlink() or not path.is_file():
        raise InvalidRequest(f"{item_id} is not a file of the cache directory: refusing to delete it.", "item_id")
    _check_inside(folder, base, item_id)
    for used in in_use:
        if used and any(p == q for p in _variants(used) for q in _variants(path)):
            raise InvalidRequest(f"{item_id} is the model that is loaded now ({path.name}): unload it first, then "
                                 "delete.", "item_id")
    item = next((i for i in _gguf_items(folder) if i["id"] == item_id), None) or {"id": item_id, "size_bytes": 0}
    path.unlink()
    if not any(p.suffix == ".gguf" or ".tmp-" in p.name for p in folder.iterdir()):
        shutil.rmtree(folder)  # its last variant: the source record goes too
    return item


# --- helpers -------------------------------------------------------------------------------------


def _folder_usage(folder: Path) -> tuple[int, int, float]:
    """(bytes, files, last access or change) of the files under ``folder`` (symlinks not followed)."""
    size = count = 0
    last = 0.0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            size += st.st_size
            count += 1
            last = max(last, st.st_atime, st.st_mtime)
    return size, count, last or folder.stat().st_mtime


def _variants(path: str | Path) -> set[Path]:
    """A path as written and with every symlink resolved (a snapshot file is a link to a blob)."""
    p = Path(path).expanduser()
    return {Path(os.path.abspath(p)), p.resolve()}


def _inside(path: str | Path, folder: Path) -> bool:
    return any(p == f or f in p.parents for p in _variants(path) for f in _variants(folder))


def _check_inside(folder: Path, base: Path, item_id: str) -> None:
    real, root = folder.resolve(), base.resolve()
    if real.parent != root:
        raise InvalidRequest(f"{item_id} lies outside the cache directory: refusing to delete it.", "item_id")


def _refuse_if_in_use(folder: Path, in_use: Iterable[str], item_id: str) -> None:
    for path in in_use:
        if path and _inside(path, folder):
            raise InvalidRequest(
                f"{item_id} holds the model that is loaded now ({Path(path).name}): unload it first, then delete.",
                "item_id",
            )
