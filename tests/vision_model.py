"""A tiny vision-language checkpoint for the tests: SmolVLM's architecture (Idefics3: a SigLIP vision
tower, a pixel-shuffle connector, a Llama text model) at toy sizes with random weights, and SmolLM2's
tokenizer (the embedded GGUF's) plus the image tokens SmolVLM adds. transformers loads it with
AutoModelForImageTextToText; llama.cpp's converter makes its GGUF and its mmproj (the app's own
``hf_to_gguf``). A few MB, made in seconds, once per cache directory.

The image is 32x32 pixels, cut into 8x8 patches (16), which the connector folds 2x2 into 4 image
tokens; no tiling (the longest edge is the tile size), so llama.cpp's preprocessing and transformers'
agree on what the model sees. The weights are drawn larger than a trained model's initialiser would,
so that the picture visibly steers the (meaningless) greedy reply.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path

IMAGE_SIZE = 32
IMAGE_TOKENS = 4  # (32 / 8) ** 2 patches / 2 ** 2
NAME = "tiny-smolvlm"
MARKER = "quantlab-tiny-vlm.txt"

# SmolVLM's chat template, also taking plain string content (what a text-only renderer passes)
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_SPECIAL = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]


def tiny_vlm(cache_dir: Path) -> Path:
    """The checkpoint folder (made once under ``cache_dir``)."""
    out = Path(cache_dir) / "test-models" / NAME
    if (out / MARKER).is_file():
        return out
    import torch
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3 import Idefics3ImageProcessorPil, Idefics3Processor

    from backends.files.sources import embedded_model_path

    gguf = embedded_model_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.add_special_tokens({"additional_special_tokens": IMAGE_SPECIAL})
    tok.chat_template = CHAT_TEMPLATE
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, tie_word_embeddings=True, rope_theta=10000.0,
                architectures=["VLlama3ForCausalLM"])  # as SmolVLM's config names its text model
    vision = dict(model_type="idefics3_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    config.architectures = ["Idefics3ForConditionalGeneration"]
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # larger than the initialiser's 0.02, so the image moves the logits
                p.normal_(0.0, 0.2 if "vision" in name or "connector" in name else 0.08)
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                       max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(images, tok, image_seq_len=IMAGE_TOKENS, chat_template=CHAT_TEMPLATE)
    tmp = out.with_name(out.name + f".tmp-{uuid.uuid4().hex[:8]}")
    model.to(torch.float16).save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / MARKER).write_text("random weights, for tests\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def png(color: tuple[int, int, int] | None = None, seed: int | None = None, size: int = IMAGE_SIZE) -> bytes:
    """A PNG: one colour, or (``seed``) random pixels."""
    from PIL import Image

    if seed is not None:
        import random

        rnd = random.Random(seed)
        img = Image.frombytes("RGB", (size, size), bytes(rnd.randrange(256) for _ in range(size * size * 3)))
    else:
        img = Image.new("RGB", (size, size), color or (255, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def vision_gguf(cache_dir: Path) -> Path:
    """The tiny checkpoint's GGUF F16, with its ``mmproj-*.gguf`` beside it, made by the app's own
    converter (``hf_to_gguf``: llama.cpp's convert_hf_to_gguf.py, then again with --mmproj); cached."""
    from backends.files.hf_to_gguf import convert_checkpoint

    return convert_checkpoint(tiny_vlm(cache_dir), Path(cache_dir))


def data_url(raw: bytes, media_type: str = "image/png") -> str:
    import base64

    return f"data:{media_type};base64," + base64.b64encode(raw).decode()


def bomb_png(side: int = 8000) -> bytes:
    """A small file that claims ``side`` x ``side`` pixels (a decompression bomb: a few KB expanding to
    hundreds of MB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (side, side), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
