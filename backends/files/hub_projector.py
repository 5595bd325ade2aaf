"""A vision GGUF's projector from the Hub repo it came from.

GGUF repos of vision models on the Hugging Face Hub keep the multimodal projector beside the model
files (``mmproj-F16.gguf``, ``mmproj-model-bf16.gguf``, ``mmproj-Q8_0.gguf`` ...). When a model file
comes from such a repo and no projector was named (``--mmproj``, the spec's ``mmproj``: those always
win), the one to use is picked from the repo's file list and downloaded into the same snapshot, next
to the model:

1. the projector whose quantization matches the model file's (``...Q8_0.gguf`` -> ``mmproj-Q8_0.gguf``);
2. else an F16 one, else a BF16 one (llama.cpp's converter's default types);
3. else the first by name.

A projector in the model file's own folder of the repo is preferred at each step. The list comes from
the Hub (``list_repo_files``), or offline (HF_HUB_OFFLINE, no network) from the cached snapshot
(``sources.repo_files``), and the file from ``hf_hub_download``, which serves it from the cache
offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from backends.base import Progress, _no_progress
from backends.errors import ModelLoadError, ModelNotFound
from backends.files import sources

# llama.cpp's file-type names as GGUF repos spell them in file names (longest first, so Q4_K_M wins over Q4_K)
_QUANT = re.compile(r"(?<![A-Z0-9])(IQ\d_[A-Z]+|Q\d_K_[SML]|Q\d_K|Q\d_[01]|TQ\d_0|MXFP4|BF16|F16|F32)(?![A-Z0-9])",
                    re.IGNORECASE)


@dataclass(frozen=True)
class HubProjector:
    """The projector chosen: its local path, its name in the repo, and why it was chosen."""

    path: Path
    filename: str
    why: str


def quant_of(filename: str) -> str | None:
    """The quantization a GGUF file's name states (``model-Q4_K_M.gguf`` -> ``Q4_K_M``), or None."""
    found = _QUANT.findall(PurePosixPath(filename).name.removesuffix(".gguf"))
    return found[-1].upper() if found else None


def pick(files: list[str], model_file: str) -> tuple[str, str] | None:
    """(the projector of ``files`` to load with ``model_file``, why), or None when the repo has none."""
    projectors = sorted(f for f in files if sources.is_projector(f))
    if not projectors:
        return None
    folder = PurePosixPath(model_file).parent
    wanted = quant_of(model_file)

    def rank(name: str) -> tuple:
        q = quant_of(name)
        return (not (wanted and q == wanted), q != "F16", q != "BF16", PurePosixPath(name).parent != folder, name)

    best = min(projectors, key=rank)
    q = quant_of(best)
    if wanted and q == wanted:
        why = f"matches the model's {wanted}"
    elif q in ("F16", "BF16"):
        why = f"{q}: no projector matches the model's {wanted}" if wanted else f"{q}"
    else:
        why = "the repo's first projector"
    if len(projectors) > 1:
        why += f"; the repo has {len(projectors)}"
    return best, why


def repo_file_of(path: Path, repo_id: str) -> str | None:
    """``path``'s name inside ``repo_id``'s snapshot folder (``sub/model.gguf``), or None when
    ``path`` is not in that repo's snapshots."""
    folder = sources.hub_repo_folder(repo_id, sources.hub_cache_dir())
    try:
        rel = path.relative_to(folder / "snapshots")  # <commit>/sub/model.gguf
    except ValueError:
        return None
    return PurePosixPath(*rel.parts[1:]).as_posix() if len(rel.parts) > 1 else None


def fetch(repo_id: str, model_path: Path, revision: str | None = None,
          progress: Progress = _no_progress) -> HubProjector | None:
    """The projector for the model file ``model_path`` downloaded from ``repo_id``, fetched into the
    same snapshot; None when the repo has no projector (a text-only model)."""
    import httpx2  # huggingface_hub 2.x's HTTP client
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    model_file = repo_file_of(model_path, repo_id) or model_path.name
    cache = sources.hub_cache_dir()
    files, online = sources.repo_files(repo_id, revision, cache)
    chosen = pick(files, model_file)
    if chosen is None:
        return None
    filename, why = chosen
    label = f"{repo_id}/{filename}"
    progress(0.0, f"Fetching the vision projector {label}")
    endpoint = sources.hub_endpoint()
    try:
        if online:
            sources.prefetch_resumable(repo_id, [filename], revision, cache, endpoint, progress, label)
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache, endpoint=endpoint,
                               tqdm_class=sources.progress_tqdm(progress, label))
    except LocalEntryNotFoundError as exc:
        raise ModelNotFound(f"The vision projector {label} is not in the local Hugging Face cache ({cache}) and "
                            "the Hub cannot be reached (name one with mmproj, or load it online once).") from exc
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise ModelLoadError(f"Downloading the vision projector {label} failed: {reason}. Loading the model "
                             "again resumes the download.") from exc
    progress(1.0, f"{label} is in the local cache")
    return HubProjector(Path(path), filename, f"{filename} from {repo_id} ({why})")
