"""The host prompt cache has its own line in the memory account: KV cells a conversation left behind
when its slot was taken are kept in host memory, and that memory is neither a model's figure nor
"the rest of the process". Real server, the embedded model with two slots, three conversations."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from app import LiveServer
from backends.base import ModelSpec
from tests.live_server import make_settings
from tests.test_pool_memory import metric_mib

pytestmark = pytest.mark.slow

TOPICS = ("Tell me about the history of sailing ships across the ocean, from the first rafts to clippers.",
          "Something else entirely: what is the price of bread in Paris and in London these days, roughly?",
          "Third topic: how do rockets reach orbit, and why do they need several stages to get there?")


def test_the_prompt_cache_is_its_own_line_and_the_lines_add_up_to_rss(cache_dir):
    from ui.monitor import figures_markdown

    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=512, parallel=2,
                                   prompt_cache_mib=64))
        empty = srv.app.state.services.stats(1)["memory_account"]
        assert empty["prompt_cache_mib"] == 0
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        for topic in TOPICS:  # the third conversation takes the first one's slot: its cells go to the cache
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": topic}],
                                           max_tokens=8, temperature=0)
        stats = srv.app.state.services.stats(50)
        acc = stats["memory_account"]
        assert 0 < acc["prompt_cache_mib"] <= 64
        assert abs(acc["models_mib"] + acc["prompt_cache_mib"] + acc["process_other_mib"] - acc["rss_mib"]) <= 0.3
        assert metric_mib(srv.url, "quantlab:prompt_cache_memory_bytes")[""] == acc["prompt_cache_mib"]
        over_http = httpx.get(srv.url + "/stats").json()["memory_account"]
        assert over_http["prompt_cache_mib"] == acc["prompt_cache_mib"]
        line = re.search(r"\*\*prompt cache\*\* ([\d,.]+) MiB", figures_markdown(stats))
        assert line and float(line.group(1).replace(",", "")) == acc["prompt_cache_mib"]
