"""Derive a plain Hugging Face checkpoint from a GGUF file, once, into the cache directory.

This lets every transformers/bitsandbytes quantization be tried on the embedded GGUF model with no
download. transformers dequantizes the GGUF weights on load; the result is re-homed in a fresh model
(without the GGUF quantization_config) and saved as safetensors.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from backends.base import Progress, _no_progress
from backends.errors import ModelLoadError
from backends.files.gguf import source_key

MARKER = "quantlab-derived.txt"


def derived_checkpoint_dir(gguf: Path, cache_dir: Path) -> Path:
    return cache_dir / "hf" / f"{gguf.stem}-{source_key(gguf)}"


def hf_checkpoint_from_gguf(gguf: Path, cache_dir: Path, progress: Progress = _no_progress) -> Path:
    """Folder with config.json, safetensors weights and tokenizer made from ``gguf`` (cached)."""
    out = derived_checkpoint_dir(gguf, cache_dir)
    if (out / MARKER).exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(0.1, f"Deriving a transformers checkpoint from {gguf.name} (first time only)")
    tmp = out.with_name(out.name + f".tmp-{uuid.uuid4().hex[:8]}")  # unique across replicas sharing a cache
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unsupported GGUF architectures
        raise ModelLoadError(f"transformers cannot read {gguf.name}: {exc}") from exc
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    fresh.generation_config = src.generation_config
    progress(0.3, "Saving the derived checkpoint")
    fresh.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(f"derived from {gguf.name}\n")
    del src, fresh
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
