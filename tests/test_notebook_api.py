"""/complete (the Notebook's raw continuation) through a real gradio_client on the real app serving
the embedded model (llama.cpp)."""

from __future__ import annotations

import pytest

COUNTING = "1, 2, 3, 4, 5, 6,"
GREEDY = dict(max_new_tokens=16, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0)


def complete(client, prompt: str = COUNTING, **overrides):
    return client.submit(prompt, *{**GREEDY, **overrides}.values(), api_name="/complete")


def test_complete_streams_the_continuation_of_the_raw_text(client):
    job = complete(client, max_new_tokens=24)
    partials = list(job)
    text = job.result()
    assert len(partials) >= 2, "the continuation was not streamed"
    assert all(text.startswith(p) for p in partials), "partials must grow towards the final continuation"
    # the raw text is continued (no chat template: no assistant turn answering it)
    assert text.lstrip().startswith("7"), text
    assert not text.startswith(COUNTING), "the continuation must not repeat the prompt"


def test_greedy_completion_is_repeatable(client):
    first = complete(client).result()
    assert first.strip()
    assert complete(client).result() == first


def test_stop_strings_end_the_continuation_before_them(client):
    full = complete(client, max_new_tokens=24).result()
    assert "9" in full, full
    cut = complete(client, max_new_tokens=24, stop="9\n10").result()
    assert "9" not in cut and full.startswith(cut)


def test_sampled_completion_follows_its_seed(client):
    hot = dict(temperature=1.2, top_k=0, top_p=1.0)
    a = complete(client, "The old lighthouse keeper", **hot, seed=7).result()
    assert a == complete(client, "The old lighthouse keeper", **hot, seed=7).result()
    others = {complete(client, "The old lighthouse keeper", **hot, seed=s).result() for s in (8, 9)}
    assert others != {a}


@pytest.mark.parametrize("prompt,overrides,needle", [
    ("", {}, "empty"),
    (COUNTING, {"temperature": -1}, "temperature"),
    (COUNTING, {"max_new_tokens": 0}, "max_new_tokens"),
    (COUNTING, {"stop": "x\n" * 20}, "stop"),
])
def test_bad_completion_requests_are_refused_by_name(client, prompt, overrides, needle):
    with pytest.raises(Exception, match=needle):
        complete(client, prompt, **overrides).result()
    assert complete(client).result().strip(), "the server keeps serving"


def test_complete_over_rest_with_only_the_prompt(live_app):
    """Plain HTTP, curl's way: parameters left out take their defaults."""
    import json

    import httpx

    with httpx.Client(base_url=live_app.url, timeout=120) as http:
        event_id = http.post("/gradio_api/call/complete", json={"data": [COUNTING]}).json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/complete/{event_id}") as stream:
            lines = [line for line in stream.iter_lines() if line]
    assert lines[-2] == "event: complete", lines[-4:]
    (text,) = json.loads(lines[-1][len("data:"):])
    assert text.strip()
