"""The Model tab's text while a model loads: what is loading (the model, from where, engine,
quantization) and how far it got, not a dump of the load's spec; the Details are behind a closed
disclosure. Fast: a scripted backend whose load waits for the test."""

from __future__ import annotations

import threading

from backends.base import ModelSpec, _no_progress
from backends.manager import describe_spec
from tests.fakes import FakeBackend, FakeScript
from backends.registry import BackendRegistry
from tests.conftest import make_manager


def test_a_load_is_described_for_people():
    assert describe_spec(ModelSpec(source="embedded", backend="llamacpp", quantization="Q8_0")) == (
        "embedded (the built-in SmolLM2-135M) · llamacpp · Q8_0")
    assert describe_spec(ModelSpec(source="org/model", backend="llamacpp", gguf_file="m-Q4_K_M.gguf")) == (
        "org/model from the Hugging Face Hub (file m-Q4_K_M.gguf) · llamacpp · the backend's default quantization")
    assert describe_spec(ModelSpec(source="/models/a/m.gguf", backend="llamacpp", quantization="Q4_0")) == (
        "m.gguf from /models/a · llamacpp · Q4_0")


def test_the_model_tab_says_what_is_loading_and_how_far():
    from ui.model import describe

    script, step, go = FakeScript(), threading.Event(), threading.Event()

    class SlowLoad(FakeBackend):
        def __init__(self, cache_dir=None):
            super().__init__(script, cache_dir)

        def load(self, spec, progress=_no_progress):
            progress(0.4, "Loading m.gguf")
            step.set()
            go.wait(30)
            return super().load(spec, progress)

    manager = make_manager(registry=BackendRegistry([SlowLoad]))
    t = threading.Thread(target=manager.load, args=(ModelSpec(source="embedded", backend="fake"),))
    t.start()
    try:
        assert step.wait(30)
        status = manager.status()
        text = describe(status)
        assert "**Loading:** embedded (the built-in SmolLM2-135M) · fake · none · " \
               "40% · Loading m.gguf" in text
        assert "ModelSpec(" not in text and "ModelSpec(" not in str(status["loading"])
    finally:
        go.set()
        t.join(30)
    assert manager.status()["loading"] is None and manager.status()["loading_progress"] is None
