"""Entry point: ``python app.py [flags]`` serves the UI, the Gradio API, /health and /v1 on one port.

Nothing happens at import time but one thing: ``backends.omp_env`` puts the OpenMP wait policy in the
environment, which libgomp reads once when the first engine library loads, so it comes first.
``create_app(settings)`` builds the FastAPI app (tests call it directly) and ``main()`` parses flags,
starts loading the model in the background and runs uvicorn. ``LiveServer`` runs the same app under
uvicorn in a thread of the calling process, on a free port (the tests, the benchmarks, a notebook).
"""

from __future__ import annotations

import backends.omp_env  # noqa: F401 - first: the OpenMP wait policy, before any engine library loads

import gc
import logging
import socket
import sys
import threading
import time

log = logging.getLogger("quantlab")
CUT_GRACE_S = 3  # after --shutdown-timeout: time for cut streams to send their error event and finish


def create_app(settings, manager=None):
    """The FastAPI app with the Gradio Blocks mounted at / and the HTTP extras beside it."""
    from contextlib import asynccontextmanager

    import gradio as gr
    from fastapi import FastAPI

    from backends.base import ModelSpec
    from backends.manager import ModelManager
    from backends.remote import configured_bases
    from backends.urls import ServerEngine
    from monitoring.memory import MemoryMonitor
    from monitoring.metrics import MetricsRecorder
    from monitoring.prometheus import PrometheusExporter
    from monitoring.request_log import RequestLog
    from optimization.lab import Lab
    from serving.anthropic.errors import refusal as anthropic_refusal
    from serving.anthropic.routes import add_anthropic_routes
    from serving.auth import KEY_USER, AccessPolicy, ApiKeyMiddleware
    from serving.body_limit import BodyLimitMiddleware
    from serving.gradio_guard import GradioGuardMiddleware
    from serving.ollama.errors import refusal as ollama_refusal
    from serving.ollama.routes import add_ollama_routes
    from serving.uploads import UploadGuardMiddleware
    from serving.chat_service import ChatService
    from serving.openai.routes import add_openai_routes
    from serving.ops import add_ops_routes
    from serving.ratelimit import RateLimiter
    from serving.services import Services
    from ui.api_docs import StreamingSnippets
    from ui.app_ui import build_blocks

    server, model = settings.server_part(), settings.model_part()  # each wiring step reads its half
    policy = AccessPolicy(server.auth, server.api_key, server.protect_metrics)  # bad --auth fails here
    if server.exposed and not policy.configured:
        log.warning("serving on %s without --auth or --api-key: anyone who can reach port %d can chat, load and "
                    "delete models and read the server's status. Set --auth USER:PASS and/or --api-key KEY.",
                    server.bind_host, server.port)
    monitor = MemoryMonitor(interval=server.monitor_interval)
    if manager is None:
        manager = ModelManager(metrics=MetricsRecorder(rss=monitor.rss), cache_dir=server.cache_dir,
                               allowed_dir=server.models_dir if server.exposed else None,
                               allowed_remote=tuple(server.allow_remote) if server.exposed else None,
                               log_prompts=server.log_prompts)
    request_log = RequestLog(server.request_log)
    manager.metrics.add_listener(request_log.on_event)
    exporter = PrometheusExporter(manager, monitor)
    base_spec = ModelSpec.from_settings(model)
    manager.server_engine = ServerEngine(configured_bases(base_spec), model.remote_api_key)
    manager.drain_s = server.load_drain_timeout
    if settings.pool_enabled:  # --models-dir given: its models are served by name
        from backends.pool import Catalogue

        manager.set_pool(Catalogue(server.models_dir, base_spec, hub=not server.exposed), models_max=server.models_max,
                         autoload=not server.no_models_autoload, keep_alive_s=server.keep_alive)
    chat = ChatService(manager, RateLimiter(server.rate_limit_rpm, server.max_streams_per_client),
                       limits=server.limits)
    services = Services(manager, chat, Lab(manager, monitor, base_spec=base_spec), base_spec, monitor,
                        memory_budget_bytes=server.memory_budget_mib * 2**20)
    if manager.pool is not None:  # a load by name is checked against the memory like /load_model's
        manager.pool.fits = services.check_memory
        manager.pool.listeners.append(request_log.on_pool_event)  # loads and evictions in the request log

    @asynccontextmanager
    async def lifespan(app):
        monitor.start()
        try:
            yield
        finally:
            manager.close()  # free the models; their engine threads must not keep the process alive
            monitor.stop()
            request_log.close()

    app = FastAPI(title="QuantLab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.manager = manager
    app.state.settings = settings
    app.state.monitor = monitor
    app.state.chat = chat
    app.state.services = services
    add_ops_routes(app, manager, exporter, policy, exposed=server.exposed)
    add_anthropic_routes(app, manager, chat)  # before the OpenAI routes: their /v1 catch-all comes last
    add_openai_routes(app, manager, chat)
    add_ollama_routes(app, manager, chat)
    blocks = build_blocks(services, settings)
    app.state.blocks = blocks
    app.add_middleware(UploadGuardMiddleware, blocks=blocks, max_bytes=server.max_upload_bytes)
    app.add_middleware(GradioGuardMiddleware, blocks=blocks)
    app.add_middleware(StreamingSnippets, blocks=blocks)  # the API page's streaming examples use submit
    def refusal(path: str, status: int, message: str):  # a middleware's refusal in its route's API dialect
        return anthropic_refusal(path, status, message) or ollama_refusal(path, status, message)

    app.add_middleware(ApiKeyMiddleware, policy=policy, router=app.router, refusal=refusal)
    # outermost: before any parsing
    app.add_middleware(BodyLimitMiddleware, max_bytes=server.max_body_bytes, refusal=refusal)
    if server.forwarded_allow_ips:  # the client address from X-Forwarded-For, only when a trusted proxy sent it
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=server.forwarded_allow_ips)
    message = "QuantLab: log in." + (f" With the API key: user name '{KEY_USER}'." if policy.api_key else "")
    app = gr.mount_gradio_app(app, blocks, path="/", auth=policy.ui_login, max_file_size=server.max_upload_bytes,
                              auth_message=message)
    # Gradio checks that a file an API caller names was uploaded by a user only once ``launch()`` ran;
    # mounted, it never runs, and any server path named in a FileData would be copied into the upload
    # folder and handed to the handler. Marked as launched, Gradio refuses such paths itself.
    blocks.has_launched = True
    return app


def server_config(app, settings, host: str | None = None, **options):
    """uvicorn's configuration for ``app``. uvicorn's own X-Forwarded-For handling is off: it would
    trust 127.0.0.1 by default, so any local process could pick the address its rate limit is
    counted under; the app applies ``--forwarded-allow-ips`` itself (``create_app``)."""
    import uvicorn

    return uvicorn.Config(app, host=host or settings.bind_host, port=settings.port, log_level="warning",
                          proxy_headers=False, **options)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The real app (FastAPI + Gradio) under uvicorn on 127.0.0.1:``settings.port``, in a thread of this
    process; ``with LiveServer(settings) as srv:`` starts it, ``srv.url`` reaches it, leaving stops it."""

    def __init__(self, settings):
        from serving.quiet_server import QuietServer

        self.settings = settings
        self.app = create_app(settings)
        self.manager = self.app.state.manager
        # a bounded graceful shutdown, as main()'s: gradio_client's heartbeat SSE outlives Client.close(), and
        # uvicorn would wait for it past __exit__'s join, leaving the model loaded
        config = server_config(self.app, settings, host="127.0.0.1", timeout_graceful_shutdown=3)
        self.server = QuietServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.stop()
        self.thread.join(timeout=10)


def settle_heap() -> None:
    """Put what startup built (the libraries, Gradio's Blocks, the first model's Python side) out of the
    garbage collector's reach. Otherwise every full collection walks all of it: measured, 129 ms holding
    the GIL once every ~10 short replies, so the decode stood still between two tokens. What is made
    later is collected as before."""
    gc.collect()
    gc.freeze()


def load_in_background(manager, spec) -> threading.Thread:
    def run():
        try:
            info = manager.load(spec)
            log.info("loaded %s (%s, %s) in %.1f s", info.name, info.backend, info.quantization, info.load_seconds)
            settle_heap()
        except Exception as exc:  # the server keeps running; /health says 503 and why
            log.error("could not load %s: %s", spec.source, exc)

    t = threading.Thread(target=run, name="initial-load", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    import signal

    from serving.quiet_server import QuietServer

    class GracefulServer(QuietServer):
        """uvicorn re-raises SIGTERM after a graceful shutdown (exit code -15); a requested stop that
        drained cleanly is a success for orchestrators (Kubernetes, systemd, docker stop): exit 0.
        Streams still running ``--shutdown-timeout`` seconds after the signal are cut by the chat
        service (each gets an in-band error and a finish reason), logged, and the exit code is 1."""

        cut = 0
        deadline: threading.Timer | None = None

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)
            if self.deadline is None:
                self.deadline = threading.Timer(settings.shutdown_timeout, self.cut_streams)
                self.deadline.daemon = True
                self.deadline.start()

        def cut_streams(self):
            self.cut = app.state.chat.cut_all()
            if self.cut:
                log.error("shutdown: %d stream(s) still running after --shutdown-timeout %d s were cut",
                          self.cut, settings.shutdown_timeout)

    from backends.base import ModelSpec
    from serving.settings import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    if settings.fit:  # print the fit advice, then serve its pick (or stop with --fit-only)
        from serving.fit_cli import apply_fit

        settings, code = apply_fit(settings)
        if code is not None:
            return code
    app = create_app(settings)
    settle_heap()
    if not settings.no_model:
        load_in_background(app.state.manager, ModelSpec.from_settings(settings.model_part()))
    log.info("serving on http://%s:%d", settings.bind_host, settings.port)
    # uvicorn's own deadline comes a little later, so the cut streams can send their last events.
    config = server_config(app, settings, timeout_graceful_shutdown=settings.shutdown_timeout + CUT_GRACE_S)
    server = GracefulServer(config)
    server.run()
    if server.deadline is not None:
        server.deadline.cancel()
    return 1 if server.cut else 0


if __name__ == "__main__":
    sys.exit(main())
