"""The raw engines, called as a user of the library would: the baseline every app path is divided by.

Each engine imports its library only when built: llama_cpp for ``RawLlamaCpp``, torch and transformers
for ``RawTransformers``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from benchmarks.common.workload import Sample, log, messages_for

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


class RawLlamaCpp:
    """llama-cpp-python directly, as a user of the library would call it."""

    engine = "llama_cpp.Llama.create_chat_completion(stream=True)"

    def __init__(self, model_path: Path, n_ctx: int, n_threads: int):
        from backends.llamacpp.open import open_llama

        # n_threads_batch as the app's engine uses it (llama-cpp-python would default it to every CPU,
        # which gives the raw path a faster prefill than the app's whenever --threads < CPUs); the
        # same model parameters as the app (no AMX buffers where llama.cpp crashes in them)
        self.llm = open_llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                              flash_attn="auto", verbose=False)  # flash attention as the app's default

    def run(self, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
        t0 = time.perf_counter()
        first, tokens, text = None, 0, []
        stream = self.llm.create_chat_completion(messages_for(prompt), stream=True, max_tokens=max_tokens,
                                                 temperature=0.0)
        for chunk in stream:
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if content:
                if first is None:
                    first = time.perf_counter()
                tokens += 1  # llama-cpp-python streams one chunk per generated token (no stop strings)
                text.append(content)
        end = time.perf_counter()
        if first is None:
            raise RuntimeError(f"raw llama.cpp produced no text for prompt {prompt_index}")
        return Sample(prompt_index, first - t0, end - t0, tokens, "".join(text))

    def close(self) -> None:
        self.llm.close()
        self.llm = None


class RawTransformers:
    """HF generate() with a TextIteratorStreamer, in a thread, at the dtype the app loads (bf16)."""

    engine = "transformers generate + TextIteratorStreamer"

    def __init__(self, checkpoint: Path, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(checkpoint))
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=getattr(torch, dtype),
                                                          device_map="cpu")
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos if eos is not None else self.tok.eos_token_id]
        self.eos = [e for e in eos if e is not None]

    def run(self, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
        from transformers import TextIteratorStreamer

        torch, eos = self.torch, self.eos
        ids = self.tok.apply_chat_template(messages_for(prompt), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        marks: dict = {"first": None, "tokens": 0}

        class CountingStreamer(TextIteratorStreamer):
            """Records when the first generated token exists and counts tokens (the text queue
            itself releases whole words, so counting its pieces would undercount tokens)."""

            def put(self, value):
                if not self.next_tokens_are_prompt:
                    new = [t for t in value.reshape(-1).tolist() if t not in eos]
                    if new and marks["first"] is None:
                        marks["first"] = time.perf_counter()
                    marks["tokens"] += len(new)
                super().put(value)

        streamer = CountingStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def generate():
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                        max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None,
                                        top_k=None, streamer=streamer, eos_token_id=eos, pad_token_id=eos[0])
            except BaseException as exc:  # re-raised below: a TextIteratorStreamer would wait forever
                errors.append(exc)
                streamer.end()

        t0 = time.perf_counter()
        worker = threading.Thread(target=generate, name="raw-hf-generate", daemon=True)
        worker.start()
        text = "".join(streamer)
        end = time.perf_counter()
        worker.join()
        if errors:
            raise errors[0]
        if marks["first"] is None:
            raise RuntimeError(f"raw transformers produced no tokens for prompt {prompt_index}")
        return Sample(prompt_index, marks["first"] - t0, end - t0, marks["tokens"], text)

    def close(self) -> None:
        self.model = self.tok = None


def open_raw_engine(args):
    """The raw engine for ``args.backend`` and the model the app will serve; returns (engine, info)."""
    from backends.files.sources import default_cache_dir, embedded_model_path

    if args.backend == "llamacpp":
        path = Path(args.model) if args.model else embedded_model_path()
        log(f"RAW: llama_cpp.Llama({path.name}, n_ctx={args.n_ctx}, n_threads={args.threads}, n_threads_batch={args.threads})")
        engine = RawLlamaCpp(path, args.n_ctx, args.threads)
        return engine, {"engine": engine.engine, "model_file": str(path)}
    from backends.files.hf_convert import hf_checkpoint_from_gguf

    if args.model:
        checkpoint = Path(args.model)
    else:
        log("RAW: deriving (or reusing) the HF checkpoint of the embedded GGUF")
        checkpoint = hf_checkpoint_from_gguf(embedded_model_path(), default_cache_dir())
    log(f"RAW: transformers {checkpoint.name} at {args.dtype}")
    engine = RawTransformers(checkpoint, DTYPES[args.dtype])
    return engine, {"engine": engine.engine, "model_file": str(checkpoint)}
