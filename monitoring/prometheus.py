"""GET /metrics in Prometheus text format, names following vLLM's where one exists
(``vllm:time_to_first_token_seconds`` -> ``quantlab:time_to_first_token_seconds``), labelled by
model and endpoint (chat, ui, v1, embeddings, compare, evaluate). The exporter has its own CollectorRegistry (no process-global registry) and listens to the
manager's MetricsRecorder, so every entry point (UI, Gradio API, /v1) is counted once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backends.manager import ModelManager
from monitoring.memory import MemoryMonitor
from monitoring.metrics import RequestStats
from monitoring.model_memory import model_memory
from monitoring.stats import memory_account

P = "quantlab:"
_LAT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class PrometheusExporter:
    def __init__(self, manager: ModelManager, monitor: MemoryMonitor):
        self.manager, self.monitor = manager, monitor
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "quantization", "endpoint"]
        r = self.registry
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token", labels, buckets=_LAT, registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Gap between streamed tokens", labels, buckets=_ITL, registry=r)
        self.tpot = Histogram(P + "request_time_per_output_token_seconds", "Mean time per output token of a request",
                              labels, buckets=_ITL, registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Request latency", labels, buckets=_LAT, registry=r)
        self.queue = Histogram(P + "request_queue_time_seconds", "Time waiting for a model slot", labels, buckets=_LAT,
                               registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Tokens generated", labels, registry=r)
        self.requests = Counter(P + "request_success", "Finished requests by finish reason / outcome",
                                labels + ["finished_reason"], registry=r)
        r.register(_LiveGauges(self))
        manager.metrics.add_listener(self.on_event)

    def on_event(self, event: str, s: RequestStats) -> None:
        if event != "finished":
            return
        lab = (s.model, s.quantization, s.endpoint)
        if s.ttft_s is not None:
            self.ttft.labels(*lab).observe(s.ttft_s)
        for gap in s.itls:
            self.itl.labels(*lab).observe(gap)
        if s.tpot_s is not None:
            self.tpot.labels(*lab).observe(s.tpot_s)
        self.e2e.labels(*lab).observe(s.e2e_s)
        self.queue.labels(*lab).observe(s.queue_wait_s)
        self.prompt_tokens.labels(*lab).inc(s.prompt_tokens)
        self.generation_tokens.labels(*lab).inc(s.completion_tokens)
        reason = s.finish_reason if s.outcome == "ok" and s.finish_reason else s.outcome
        self.requests.labels(*lab, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class _LiveGauges:
    """Gauges read at scrape time: running/waiting requests, memory."""

    def __init__(self, exporter: PrometheusExporter):
        self.x = exporter

    def describe(self):
        return []

    def collect(self):
        m = self.x.manager
        cur = m.current
        model, quant = (cur.name, cur.quantization) if cur else ("", "")
        running = GaugeMetricFamily(P + "num_requests_running", "Requests generating now", labels=["model_name"])
        running.add_metric([model], m.metrics.running)
        waiting = GaugeMetricFamily(P + "num_requests_waiting", "Requests waiting for a model slot", labels=["model_name"])
        waiting.add_metric([model], m.metrics.waiting)
        yield running
        yield waiting
        loaded = GaugeMetricFamily(P + "model_loaded", "1 while a model is loaded", labels=["model_name", "quantization", "backend"])
        footprint = GaugeMetricFamily(P + "model_footprint_bytes", "The chat model's weights + KV cache as the "
                                      "engine measured them (model_memory_bytes, the memory account's figure, adds "
                                      "the overhead estimate)", labels=["model_name", "quantization"])
        # the one memory account (monitoring.stats.memory_account): a gauge per model held, and the rest of RSS
        account = memory_account(m, self.x.monitor)
        if cur:
            loaded.add_metric([model, quant, cur.backend], 1)
            mem = model_memory(cur)  # the one account's parts
            footprint.add_metric([model, quant], mem["weights_bytes"] + mem["kv_bytes"])
        yield loaded
        yield footprint
        per_model = GaugeMetricFamily(P + "model_memory_bytes", "Memory of each model held: weights + KV cache + "
                                      "overhead (the figure /stats, /health and the Model tab show, in MiB there)",
                                      labels=["model_name", "quantization", "role"])
        for row in account["models"]:
            per_model.add_metric([row["name"], row["quantization"], row["role"]], row["memory"]["total_bytes"])
        yield per_model
        if m.pool is not None:
            events = CounterMetricFamily(P + "model_pool_events", "Model pool loads, failed loads, evictions "
                                         "(--models-max) and unloads (idle --keep-alive, asked)",
                                         labels=["model_name", "event"])
            for (name, event), n in sorted(m.pool.events.items()):
                events.add_metric([name, event], n)
            yield events
        cache = GaugeMetricFamily(P + "prompt_cache_memory_bytes", "Host memory of the prompt cache (KV cells "
                                  "kept for later prompts sharing a prefix), beyond model_memory_bytes")
        cache.add_metric([], account["prompt_cache_bytes"])
        yield cache
        if account["rss_bytes"] is not None:
            other = GaugeMetricFamily(P + "process_other_memory_bytes", "Resident memory of the process beyond "
                                      "the models held and the prompt cache (Python, Gradio, other caches): RSS "
                                      "minus model_memory_bytes minus prompt_cache_memory_bytes")
            other.add_metric([], account["rss_bytes"] - account["models_bytes"] - account["prompt_cache_bytes"])
            yield other
        snap = self.x.monitor.latest()
        rss = GaugeMetricFamily(P + "process_resident_memory_bytes", "Resident memory of the server process")
        rss.add_metric([], snap["process"]["rss_bytes"])
        yield rss
        cpu = GaugeMetricFamily(P + "process_cpu_percent", "CPU use of the server process (100 = one core)")
        cpu.add_metric([], snap["process"]["cpu_percent"])
        yield cpu
        gpu_used = GaugeMetricFamily(P + "gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        gpu_total = GaugeMetricFamily(P + "gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        gpu_util = GaugeMetricFamily(P + "gpu_utilization_percent", "GPU utilisation (NVML)", labels=["gpu"])
        for d in snap["gpu"]["devices"]:
            if "used_bytes" in d:
                gpu_used.add_metric([str(d["index"])], d["used_bytes"])
                gpu_total.add_metric([str(d["index"])], d["total_bytes"])
                gpu_util.add_metric([str(d["index"])], d["utilization_percent"])
        yield gpu_used
        yield gpu_total
        yield gpu_util
