"""Pictures on the transformers backend: the tiny SmolVLM-architecture checkpoint
(``tests/vision_model.py``) loaded with AutoModelForImageTextToText and its processor, asked through
the real openai client: the same picture gives the same greedy reply, a different one another; the
picture's tokens are counted; the model says it sees."""

from __future__ import annotations

import openai
import pytest

from backends.base import ModelSpec
from tests.live_server import make_settings
from tests.test_vision_llamacpp import BLUE, NOISE, RED, ask
from tests.vision_model import IMAGE_TOKENS, tiny_vlm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_vlm_oai(cache_dir):
    from app import LiveServer

    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        srv.manager.load(ModelSpec(source=str(tiny_vlm(cache_dir)), backend="transformers", quantization="fp32",
                                   n_ctx=512, parallel=1))
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        yield c
        c.close()


def test_transformers_same_picture_same_reply_other_picture_other_reply(hf_vlm_oai):
    red1, red2, blue, noise = (ask(hf_vlm_oai, img).choices[0].message.content for img in (RED, RED, BLUE, NOISE))
    assert red1 and red1 == red2
    assert len({red1, blue, noise}) == 3, (red1, blue, noise)


def test_transformers_counts_the_pictures_tokens_and_says_it_sees(hf_vlm_oai):
    text_only = hf_vlm_oai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is in the picture?"}], max_tokens=2,
        temperature=0).usage.prompt_tokens
    assert ask(hf_vlm_oai, RED, max_tokens=2).usage.prompt_tokens - text_only >= IMAGE_TOKENS
    assert "vision" in hf_vlm_oai.models.list().data[0].model_extra["capabilities"]
