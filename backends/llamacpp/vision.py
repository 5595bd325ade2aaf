"""Pictures for llama.cpp vision models, through libmtmd (llama-cpp-python's ``mtmd_cpp``).

A vision GGUF comes with a multimodal projector (the ``mmproj`` GGUF: the vision encoder and the
projection into the text model's embeddings), named with ``--mmproj`` or found beside the model file
(``mmproj*.gguf``, as llama.cpp's converter and the Hub's GGUF repos name it). The prompt is rendered
with the chat template as for text, each picture written as mtmd's media marker; ``mtmd_tokenize``
cuts it into text and image chunks, and ``mtmd_helper_eval_chunks`` encodes each picture and decodes
the chunks into the caller's llama context, for one sequence, ending with the last token's logits.
From there generation is the text path's: sample, feed the token, repeat.

The KV cells of a picture hold no token, so a prompt with pictures never shares a cached prefix: its
cells are recomputed each time (a conversation about one picture re-encodes it every turn).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

from backends.base import ImageInput
from backends.errors import BackendError, InvalidRequest, ModelLoadError
from backends.files import sources
from backends.llamacpp.template import MEDIA_MARKER

MMPROJ_GLOB = "mmproj*.gguf"


def find_mmproj(model: Path, explicit: str | None) -> Path | None:
    """The projector to load: ``explicit`` (a path), else the one ``mmproj*.gguf`` beside ``model``,
    else None (a text-only model)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ModelLoadError(f"The vision projector {path.name} does not exist (mmproj).")
        return path
    found = sorted(p for p in model.parent.iterdir() if p.is_file() and sources.is_projector(p.name))
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4])
        raise ModelLoadError(f"{model.parent.name}/ holds several vision projectors ({names}): name one with mmproj.")
    return found[0] if found else None


class Vision:
    """One mtmd context on a loaded model: turns a prompt with pictures into chunks."""

    def __init__(self, mmproj: Path, llm, n_threads: int, use_gpu: bool):
        import llama_cpp._logger as llama_log
        from llama_cpp import mtmd_cpp as M

        self.M = M
        M.mtmd_helper_log_set(llama_log.llama_log_callback, ctypes.c_void_p(0))  # quiet unless verbose
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self._marker_bytes = MEDIA_MARKER.encode()  # kept alive: the params point at it
        params.media_marker = self._marker_bytes
        self.ctx = M.mtmd_init_from_file(str(mmproj).encode(), llm._model.model, params)
        if not self.ctx:
            raise ModelLoadError(f"llama.cpp could not load the vision projector {mmproj.name}: is it the projector "
                                 "made for this model?")
        if not M.mtmd_support_vision(self.ctx):
            M.mtmd_free(self.ctx)
            self.ctx = None
            raise ModelLoadError(f"{mmproj.name} has no vision encoder (an audio projector?): pictures need one.")
        self.marker = MEDIA_MARKER
        self.path = mmproj
        self._lock = threading.Lock()  # mtmd_tokenize preprocesses pictures in the context's buffers

    def prompt(self, text: str, images: Sequence[ImageInput]) -> MediaPrompt:
        """``text`` (``marker`` where each picture goes, in order) and ``images`` as mtmd chunks."""
        M = self.M
        if text.count(self.marker) != len(images):
            raise InvalidRequest(f"The chat template wrote {text.count(self.marker)} picture places for "
                                 f"{len(images)} pictures.", "messages")
        bitmaps = []
        chunks = M.mtmd_input_chunks_init()
        try:
            for img in images:
                buf = (ctypes.c_uint8 * len(img.rgb)).from_buffer_copy(img.rgb)
                bm = M.mtmd_bitmap_init(img.width, img.height, buf)
                if not bm:
                    raise InvalidRequest(f"llama.cpp could not take a {img.width}x{img.height} picture.", "messages")
                bitmaps.append(bm)
                M.mtmd_bitmap_set_id(bm, img.digest.encode())
            raw = text.encode("utf-8")
            inp = M.mtmd_input_text()
            inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), False, True
            arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            with self._lock:
                rc = M.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                raise InvalidRequest(f"llama.cpp could not read this prompt's pictures (mtmd_tokenize returned {rc}).",
                                     "messages")
            out = MediaPrompt(self, chunks)
            chunks = None
            return out
        finally:
            for bm in bitmaps:
                M.mtmd_bitmap_free(bm)
            if chunks is not None:
                M.mtmd_input_chunks_free(chunks)

    def close(self) -> None:
        if self.ctx is not None:
            self.M.mtmd_free(self.ctx)
            self.ctx = None


class MediaPrompt:
    """A tokenized prompt with pictures (owns its mtmd chunks: ``close`` frees them)."""

    def __init__(self, vision: Vision, chunks):
        self._vision, self._chunks = vision, chunks
        M = vision.M
        self.n_tokens = int(M.mtmd_helper_get_n_tokens(chunks))  # prompt tokens, a picture's included
        self.n_pos = int(M.mtmd_helper_get_n_pos(chunks))  # KV positions it takes

    def eval(self, lctx, n_past: int, seq_id: int, n_batch: int) -> int:
        """Encode the pictures and decode every chunk into ``lctx`` for ``seq_id`` from ``n_past``,
        logits after the last token; returns the next position."""
        import llama_cpp as L

        new_n_past = L.llama_pos(0)
        rc = self._vision.M.mtmd_helper_eval_chunks(self._vision.ctx, lctx, self._chunks, n_past, seq_id, n_batch,
                                                    True, ctypes.byref(new_n_past))
        if rc != 0:
            raise BackendError(f"llama.cpp could not evaluate the prompt's pictures (mtmd returned {rc}).")
        return int(new_n_past.value)

    def close(self) -> None:
        if self._chunks is not None:
            self._vision.M.mtmd_input_chunks_free(self._chunks)
            self._chunks = None

    def __enter__(self) -> MediaPrompt:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
