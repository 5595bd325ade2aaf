"""A transformers checkpoint folder (safetensors; or a Hub repo through ``sources``) becomes a GGUF F16
with llama.cpp's own converter (see ``gguf_converter``), run in a subprocess whose log lines become
progress. The F16 is written to a temporary name and renamed when complete: a failed or interrupted
conversion leaves nothing behind. Every other GGUF type is then made from it by the requantizer
(``gguf.gguf_variant``), beside it in the same cache folder.

(The opposite direction, GGUF -> transformers checkpoint, is ``hf_convert``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from backends.files import gguf, sources
from backends.base import Progress, _no_progress
from backends.errors import ModelLoadError
from backends.files.gguf_converter import ConverterUnavailable, converter_command, ensure_converter

F16_SUFFIX = ".F16.gguf"
MMPROJ_PREFIX = "mmproj-"  # llama.cpp's converter's name for a projector; the llama.cpp backend looks for it
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_BLOCK = re.compile(r"^INFO:hf-to-gguf:blk\.(\d+)\.")
_WRITING = re.compile(r"Writing:\s+(\d+)%")
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


def is_checkpoint(path: Path) -> bool:
    """A folder with config.json and weights the converter reads (safetensors, or PyTorch .bin)."""
    return path.is_dir() and (path / "config.json").is_file() and any(
        any(path.glob(p)) for p in WEIGHT_PATTERNS)


def check_checkpoint(path: Path) -> None:
    """ModelLoadError, in one sentence, unless ``path`` is a checkpoint folder."""
    if path.is_file():
        kind = "a GGUF file already" if path.suffix == ".gguf" else "a file"
        raise ModelLoadError(f"{path.name} is {kind}, not a checkpoint folder: give a folder with config.json "
                             "and *.safetensors weights, or a Hugging Face repo id.")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path.name}/ is not a checkpoint folder: it has no config.json "
                             "(give a folder with config.json and *.safetensors weights, or a Hugging Face repo id).")
    if not is_checkpoint(path):
        raise ModelLoadError(f"{path.name}/ has a config.json but no *.safetensors (or pytorch_model*.bin) weights.")
    for name in ("config.json", "tokenizer_config.json"):
        # llama.cpp's converter opens tokenizers with trust_remote_code=True: a checkpoint that ships
        # its own code (auto_map) would run it in the server's name
        try:
            auto_map = json.loads((path / name).read_text()).get("auto_map") if (path / name).is_file() else None
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{path.name}/{name} is not valid JSON.") from exc
        if auto_map:
            raise ModelLoadError(f"{path.name}/ ships its own Python code ({name} has auto_map), which llama.cpp's "
                                 "converter would run: it is not converted here. Convert it yourself with "
                                 "llama.cpp's convert_hf_to_gguf.py if you trust that code, then load the GGUF.")


def checkpoint_name(path: Path) -> str:
    """A readable name: the folder's, or for a Hub snapshot (``models--org--name/snapshots/<commit>``) the repo's."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--"):]
    return path.name


def checkpoint_key(path: Path) -> str:
    """Identity of a checkpoint's contents: its path and each file's name, size and mtime."""
    h = hashlib.sha1(str(path.resolve()).encode())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def f16_path(checkpoint: Path, cache_dir: Path) -> Path:
    name = checkpoint_name(checkpoint)
    return cache_dir / "gguf" / f"{name}-{checkpoint_key(checkpoint)}" / f"{name}{F16_SUFFIX}"


def is_multimodal(checkpoint: Path) -> bool:
    """A vision-language checkpoint: its config.json has a ``vision_config`` (SmolVLM, Gemma 3, Qwen2-VL, ...)."""
    try:
        return isinstance(json.loads((checkpoint / "config.json").read_text()).get("vision_config"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def mmproj_path(f16: Path) -> Path:
    """Where a vision checkpoint's projector goes: beside its F16, where the llama.cpp backend finds it."""
    return f16.with_name(MMPROJ_PREFIX + f16.name)


def convert_checkpoint(checkpoint: Path, cache_dir: Path, progress: Progress = _no_progress,
                       cancel: threading.Event | None = None) -> Path:
    """The GGUF F16 of ``checkpoint`` (a local folder), converted once and cached; for a vision model
    also its multimodal projector (``mmproj-<name>.F16.gguf``) beside it."""
    check_checkpoint(checkpoint)
    out = f16_path(checkpoint, cache_dir)
    vision = is_multimodal(checkpoint)
    if out.is_file() and (not vision or mmproj_path(out).is_file()):
        progress(1.0, f"{out.name} is in the cache")
        return out
    home = ensure_converter(cache_dir, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not out.is_file():
            _convert_one(home, checkpoint, out, progress, cancel, mmproj=False)
            _record(out.parent, checkpoint)
        if vision:
            _convert_one(home, checkpoint, mmproj_path(out), progress, cancel, mmproj=True)
    except BaseException:
        if not any(out.parent.iterdir()):
            out.parent.rmdir()
        raise
    progress(1.0, f"Converted {checkpoint_name(checkpoint)} to {out.name}" + (" and its vision projector" if vision else ""))
    return out


def _convert_one(home: Path, checkpoint: Path, out: Path, progress: Progress, cancel: threading.Event | None,
                 mmproj: bool) -> None:
    tmp = out.with_name(out.name + f".tmp-{uuid.uuid4().hex[:8]}")  # listed as unfinished while it runs
    try:
        _run(home, checkpoint, tmp, progress, cancel, mmproj)
        if not tmp.is_file():
            raise ModelLoadError(f"llama.cpp's converter wrote no {'projector' if mmproj else 'file'} for "
                                 f"{checkpoint.name}.")
        gguf.check_gguf(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _record(folder: Path, checkpoint: Path) -> None:
    """The source record ``gguf.source_of`` reads: the checkpoint (its type comes from its config.json)."""
    rec = folder / gguf.SOURCE_RECORD
    tmp = rec.with_name(rec.name + f".tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"source": str(checkpoint), "source_name": checkpoint_name(checkpoint),
                               "source_type": None, "checkpoint": True}))
    os.replace(tmp, rec)


def _run(home: Path, checkpoint: Path, tmp: Path, progress: Progress, cancel: threading.Event | None,
         mmproj: bool = False) -> None:
    argv, env = converter_command(home, checkpoint, tmp, mmproj=mmproj)
    try:
        layers = int(json.loads((checkpoint / "config.json").read_text()).get("num_hidden_layers") or 0)
    except (OSError, ValueError, AttributeError):
        layers = 0
    name = checkpoint_name(checkpoint) + (" (vision projector)" if mmproj else "")
    progress(0.0, f"Converting {name} to GGUF F16 with llama.cpp's convert_hf_to_gguf.py")
    tail: deque[str] = deque(maxlen=60)
    proc = subprocess.Popen(argv, env=env, cwd=str(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    stopper = None
    if cancel is not None:
        def watch() -> None:
            while proc.poll() is None:
                if cancel.wait(0.2):
                    proc.kill()
                    return
        stopper = threading.Thread(target=watch, name="convert-cancel", daemon=True)
        stopper.start()
    last, said = 0.0, ""
    try:
        buf = b""
        while chunk := proc.stdout.read1(65536):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                tail.append(line)
                step = _step(line, layers, name)
                # each new layer and phase is told; the write's percentages at most 5 times a second
                if step is not None and step[1] != said and (
                        not step[1].startswith("Writing") or time.monotonic() - last > 0.2 or step[0] >= 1.0):
                    last, said = time.monotonic(), step[1]
                    progress(*step)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if cancel is not None and cancel.is_set():
        raise ModelLoadError(f"Converting {name} was cancelled.")
    if rc != 0:
        raise _failure(name, list(tail), rc)


def _step(line: str, layers: int, name: str) -> tuple[float, str] | None:
    """(fraction, message) for a converter log line that marks progress."""
    if m := _BLOCK.match(line):
        done = int(m.group(1)) + 1
        frac = 0.05 + 0.45 * (done / layers if layers else 0.5)
        return min(frac, 0.5), f"Converting {name}: layer {done} of {layers or '?'}"
    if "Set model tokenizer" in line:
        return 0.55, f"Converting {name}: tokenizer"
    if m := _WRITING.search(line):
        return 0.6 + 0.4 * int(m.group(1)) / 100, f"Writing {name}{F16_SUFFIX}: {m.group(1)}%"
    return None


def _failure(name: str, tail: list[str], rc: int) -> ModelLoadError:
    text = "\n".join(tail)
    if m := _MISSING_MODULE.search(text):
        return ConverterUnavailable(f"llama.cpp's converter needs the Python package {m.group(1)!r}: "
                                    "pip install -r requirements.txt")
    errors = [ln.split(":", 2)[-1].strip() for ln in tail if ln.startswith("ERROR:")]
    raised = [ln for ln in tail if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)]
    reason = (raised or errors or tail or [f"exit code {rc}"])[-1]
    return ModelLoadError(f"llama.cpp's converter could not convert {name}: {reason[:400]}")


def convert_source(source: str, cache_dir: Path, quantizations: list[str] | tuple[str, ...] = (),
                   allowed_dir: Path | None = None, progress: Progress = _no_progress,
                   cancel: threading.Event | None = None) -> list[Path]:
    """A local checkpoint folder or a Hub repo id -> [its F16 GGUF, then each of ``quantizations``]."""
    for q in quantizations:
        if q not in gguf.GGUF_FTYPES:
            from backends.errors import UnsupportedQuantization

            raise UnsupportedQuantization(f"llama.cpp cannot produce {q!r}: choose from {', '.join(gguf.GGUF_FTYPES)}.")
    path = sources.resolve(source, allowed_dir, progress=sources.scaled(progress, 0.0, 0.1))
    share = 0.6 if quantizations else 0.9
    f16 = convert_checkpoint(path, cache_dir, sources.scaled(progress, 0.1, 0.1 + share), cancel)
    made = [f16]
    for i, q in enumerate(dict.fromkeys(quantizations)):
        if cancel is not None and cancel.is_set():
            raise ModelLoadError(f"Converting {checkpoint_name(path)} was cancelled.")
        if q == "F16":
            continue
        start = 0.1 + share + (0.9 - share) * i / len(quantizations)
        progress(start, f"Quantizing {f16.name} to {q}")
        made.append(gguf.gguf_variant(f16, q, cache_dir))
    return made
