"""Pictures for transformers vision-language models (SmolVLM/Idefics3, Gemma 3, Qwen2-VL, LLaVA, ...):
loaded with ``AutoModelForImageTextToText`` and their ``AutoProcessor``, whose chat template places
each picture and whose image processor turns it into the model's pixel inputs.

A message's pictures come before its text (``Message.images``): each message goes to the template as
typed parts, ``{"type": "image"}`` per picture, then ``{"type": "text"}``. The processor expands each
picture into its image tokens; the token ids and the extra tensors (``pixel_values`` and the like)
go to ``generate()`` together.
"""

from __future__ import annotations

from typing import Any

from backends.base import ChatRequest
from backends.errors import InvalidRequest
from backends.hf.chat import conversation


def _typed(message: dict[str, Any], n_images: int) -> dict[str, Any]:
    parts = [{"type": "image"} for _ in range(n_images)]
    if message.get("content"):
        parts.append({"type": "text", "text": message["content"]})
    return {**message, "content": parts}


def vision_inputs(processor, request: ChatRequest) -> tuple[list[int], dict[str, Any]]:
    """(prompt token ids, the processor's other model inputs) for a request with pictures."""
    from PIL import Image

    tok = processor.tokenizer
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = processor.chat_template
    messages, kwargs = conversation(tok, request)
    offset = len(messages) - len(request.messages)  # a system message the tools went into
    typed = messages[:offset] + [_typed(d, len(m.images)) for d, m in zip(messages[offset:], request.messages)]
    try:
        text = processor.apply_chat_template(typed, tokenize=False, add_generation_prompt=not request.continue_final,
                                             continue_final_message=request.continue_final, **kwargs)
    except Exception as exc:  # jinja TemplateError and friends
        raise InvalidRequest(f"The model's chat template rejected these messages: {exc}", "messages") from exc
    images = [Image.frombytes("RGB", (img.width, img.height), img.rgb) for img in request.images]
    try:
        inputs = processor(text=text, images=images, return_tensors="pt")
    except (ValueError, TypeError) as exc:  # e.g. the template placed fewer pictures than were sent
        raise InvalidRequest(f"The model's processor could not take these pictures: {exc}", "messages") from exc
    ids = inputs["input_ids"][0].tolist()
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    return ids, extra
