"""One streamed request over each client the app serves (gradio_client, Gradio's REST SSE, the openai
client on /v1), and the /v1 concurrency sweep. The openai paths work against any OpenAI-compatible
server: the app's /v1 and llama-server alike."""

from __future__ import annotations

import json
import threading
import time

from benchmarks.common.workload import PROMPTS, SYSTEM_PROMPT, Sample, messages_for, schedule
from monitoring.stats import percentile


def gradio_request(client, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
    t0 = time.perf_counter()
    job = client.submit(prompt, [], SYSTEM_PROMPT, max_tokens, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    first, last = None, None
    for out in job:
        reply = out[0] if isinstance(out, (list, tuple)) else out
        if first is None and reply:
            first = time.perf_counter()
        last = out
    end = time.perf_counter()
    final = job.result()
    reply, stats = (final[0], final[1]) if isinstance(final, (list, tuple)) else (final, None)
    if not stats and isinstance(last, (list, tuple)):
        stats = last[1]
    if first is None or not stats:
        raise RuntimeError(f"/chat returned no text or no stats for prompt {prompt_index}: {final!r:.200}")
    return Sample(prompt_index, first - t0, end - t0, int(stats["completion_tokens"]), reply, server=stats)


def rest_request(http, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
    """The same /chat endpoint over Gradio's documented REST API (POST /gradio_api/call/chat, then its SSE
    stream), read as it arrives: what a browser or curl sees, without gradio_client's polling loops
    (it checks for new SSE messages every 50 ms)."""
    t0 = time.perf_counter()
    data = [prompt, [], SYSTEM_PROMPT, max_tokens, 0.0, 1.0, 0, 1.0, 0]
    event_id = http.post("/gradio_api/call/chat", json={"data": data}).raise_for_status().json()["event_id"]
    first, final, event = None, None, None
    with http.stream("GET", f"/gradio_api/call/chat/{event_id}") as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("generating", "complete"):
                value = json.loads(line[5:])
                if first is None and value and value[0]:
                    first = time.perf_counter()
                if event == "complete":
                    final = value
            elif line.startswith("data:") and event == "error":
                raise RuntimeError(f"/chat over REST failed: {line[5:]:.200}")
    end = time.perf_counter()
    if first is None or not final or not final[1]:
        raise RuntimeError(f"/chat over REST returned no text or no stats for prompt {prompt_index}")
    stats = final[1]
    return Sample(prompt_index, first - t0, end - t0, int(stats["completion_tokens"]), final[0], server=stats)


def v1_request(oai, model: str, prompt_index: int, prompt: str, max_tokens: int) -> Sample:
    t0 = time.perf_counter()
    stream = oai.chat.completions.create(model=model, messages=messages_for(prompt), stream=True, max_tokens=max_tokens,
                                         temperature=0.0, seed=0, stream_options={"include_usage": True})
    first, usage, text = None, None, []
    for chunk in stream:
        if chunk.choices:
            content = chunk.choices[0].delta.content
            if content:
                if first is None:
                    first = time.perf_counter()
                text.append(content)
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    if first is None or usage is None:
        raise RuntimeError(f"/v1 returned no text or no usage for prompt {prompt_index}")
    return Sample(prompt_index, first - t0, end - t0, int(usage.completion_tokens), "".join(text))


def openai_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)


def concurrency_level(url: str, model: str, clients: int, total: int, max_tokens: int) -> dict:
    """``clients`` closed-loop streaming clients (threads) share ``total`` requests; wall time runs
    from the common start to the last request's end."""
    work = list(enumerate(schedule(total)))
    lock = threading.Lock()
    samples: list[Sample] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client_loop():
        oai = openai_client(url)
        barrier.wait()
        while True:
            with lock:
                if not work:
                    break
                _, idx = work.pop(0)
            try:
                s = v1_request(oai, model, idx, PROMPTS[idx], max_tokens)
                with lock:
                    samples.append(s)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the sweep goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
        oai.close()

    threads = [threading.Thread(target=client_loop, name=f"bench-client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(s.tokens for s in samples)
    ttft = [s.ttft_s * 1000 for s in samples]
    tpot = [s.tpot_s * 1000 for s in samples if s.tpot_s is not None]
    return {
        "clients": clients,
        "requests": total,
        "completed": len(samples),
        "errors": errors,
        "wall_s": wall,
        "output_tokens": tokens,
        "aggregate_tok_s": tokens / wall if wall > 0 else None,
        "requests_per_s": len(samples) / wall if wall > 0 else None,
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p99": percentile(ttft, 99),
        "tpot_ms_p50": percentile(tpot, 50),
        "tpot_ms_p99": percentile(tpot, 99),
        "per_request_decode_tok_s_p50": percentile([s.tok_s for s in samples if s.tok_s is not None], 50),
        "samples": [s.as_dict() for s in samples],
    }
