"""The embedded model's derived transformers checkpoint, loaded through the app's backend, for the two
benchmarks that time ``generate()`` and the continuous batcher on the same model object
(bench_transformers_batching, bench_transformers_fallback)."""

from __future__ import annotations

import argparse
import os

from backends.base import ModelSpec
from backends.files.sources import default_cache_dir
from backends.hf.backend import TransformersBackend, _eos_ids

PROMPT = "Write a long story about a dragon who learns to bake bread."


def embedded_model(args):
    """The backend (to unload) with the embedded model's derived checkpoint at ``args.dtype``, loaded without a
    batcher (parallel=1); the chat-templated prompt ids and the EOS ids. Prints the setting."""
    import torch

    backend = TransformersBackend(default_cache_dir())
    backend.load(ModelSpec(source="embedded", backend="transformers", quantization=args.dtype, n_ctx=1024,
                           parallel=1))
    model, tok = backend._model, backend._tok
    ids = list(tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.2f}, prompt {len(ids)} tokens, {args.tokens} new tokens x {args.rounds}")
    return backend, model, ids, _eos_ids(model, tok)


def parse_args(doc: str, tokens: int, rounds: int) -> argparse.Namespace:
    """The two benchmarks' shared arguments: --tokens per reply, --rounds, --dtype of the checkpoint."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--dtype", default="fp32")
    return ap.parse_args()


def gaps(stamps: list[float]) -> list[float]:
    """The seconds between consecutive token stamps."""
    return [b - a for a, b in zip(stamps, stamps[1:])]
