"""Regression tests: /evaluate did unbounded work (issue 31, item 9): it read and tokenized a whole
text file whatever ``max_tokens`` said, ``max_tokens`` had no upper bound, and a cancelled job ran to
the end. Real app, the real gradio_client, the embedded model; timeouts are liveness bounds only."""

from __future__ import annotations


import pytest

from optimization import quality
from optimization.lab import MAX_EVAL_TOKENS
from tests.live_server import wait_for


def big_text(path, megabytes: int = 10):
    line = "Quantization maps weights to fewer bits; the loss shows as KL divergence — ü ö 日本.\n"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(megabytes * 2**20 // len(line.encode()) + 1):
            f.write(line)
    return path


def test_the_reader_reads_only_the_bytes_asked_for(tmp_path):
    path = big_text(tmp_path / "big.txt")
    limit = quality.text_bytes_for(128)
    assert limit < 2**16  # a few kilobytes for 128 tokens, not the file
    text = quality.load_text(str(path), limit)
    raw = path.read_bytes()
    assert len(text.encode("utf-8")) <= limit
    assert raw.startswith(text.encode("utf-8")) and len(text.encode("utf-8")) > limit - 4  # a cut character left out
    assert "\ufffd" not in text
    default = quality.load_text(None, limit)  # the built-in text is cut the same way
    assert len(default) <= limit and quality.stdlib_text().startswith(default)


@pytest.mark.slow
def test_evaluate_refuses_max_tokens_above_the_bound(client):
    with pytest.raises(Exception) as err:
        client.predict(["llamacpp:Q8_0"], "", 10**9, "embedded", "llamacpp:F16", 64, api_name="/evaluate")
    assert f"{MAX_EVAL_TOKENS:,}" in str(err.value) and "max tokens" in str(err.value)
    assert client.predict(api_name="/model_status")  # the server still answers


@pytest.mark.slow
def test_evaluate_reads_only_the_start_of_a_10_mb_text(client, tmp_path, monkeypatch):
    path = big_text(tmp_path / "big.txt")
    read: list[int] = []
    real = quality.load_text

    def spy(p, *args, **kwargs):  # the real reader, recording how much text it returned
        text = real(p, *args, **kwargs)
        read.append(len(text.encode("utf-8")))
        return text

    monkeypatch.setattr(quality, "load_text", spy)
    rows = client.predict(["llamacpp:Q8_0"], str(path), 128, "embedded", "llamacpp:F16", 64, api_name="/evaluate")
    assert [r["tokens"] for r in rows] == [2 * 63, 2 * 63]  # two windows of 64 scored, for each row
    assert read and max(read) <= quality.text_bytes_for(128) < path.stat().st_size // 100


@pytest.mark.slow
def test_cancelling_a_running_evaluate_stops_it(client, live_app):
    refs = lambda: list(live_app.manager.cache_dir.glob("quantlab-ref-*"))  # noqa: E731 - exists while scoring
    assert not refs()
    job = client.submit(["llamacpp:Q8_0", "llamacpp:Q4_K_M", "llamacpp:Q2_K"], "", MAX_EVAL_TOKENS, "embedded",
                        "llamacpp:F16", 512, api_name="/evaluate")
    wait_for(refs, 600, "the reference's scoring")  # minutes of work from here on, if it ran to the end
    job.cancel()
    wait_for(lambda: not refs(), 120, "the evaluation's end after cancel")  # liveness: it stopped
    # the lab is free again (a second evaluation is not refused as "another ... is running"), the chat serves
    rows = client.predict(["llamacpp:Q8_0"], "", 128, "embedded", "llamacpp:F16", 64, api_name="/evaluate")
    assert len(rows) == 2
    reply, stats = client.predict("Say hi.", [], "", 8, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    assert reply and stats["completion_tokens"] > 0
