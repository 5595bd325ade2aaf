"""Settings come in two halves, as llama-cpp-python's ``Settings(ServerSettings, ModelSettings)``: the
model half (what to load at start and how) and the server half (bind, access, limits, logs). The CLI
is still generated from them: every flag stays, under a "model" or a "server" group of ``--help``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backends.base import ModelSpec
from serving.model_settings import ModelSettings
from serving.server_settings import ServerSettings
from serving.settings import Settings, parse_args

LOAD_FLAGS = ["--model", "some/repo", "--backend", "transformers", "--quantization", "int8", "--gguf-file", "m.gguf",
              "--n-ctx", "1024", "--no-prefix-cache", "--prompt-cache-mib", "64", "--parallel", "2",
              "--speculative", "ngram", "--spec-draft-tokens", "5", "--threads", "3", "--n-gpu-layers", "0",
              "--cache-type", "q8_0", "--flash-attn", "--device-map", "cpu", "--compute-dtype", "float16",
              "--no-double-quant", "--api-base", "http://engine:8000/v1", "--remote-api-key", "k",
              "--remote-timeout", "12", "--trust-remote-code"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "SPACES_ZERO_GPU", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("QUANTLAB_"):
            monkeypatch.delenv(name)


def test_the_two_halves_hold_every_setting_once():
    model, server = set(ModelSettings.model_fields), set(ServerSettings.model_fields)
    assert model and server and not model & server
    assert model | server == set(Settings.model_fields)
    assert issubclass(Settings, ModelSettings) and issubclass(Settings, ServerSettings)


def test_the_model_spec_comes_from_the_model_half_alone():
    """Every load option a flag sets reaches the spec through ``model_part()``: a load option declared in
    the server half would be missing there (AttributeError) or differ from the full settings' spec."""
    settings = parse_args(LOAD_FLAGS + ["--port", "9005", "--api-key", "server-key"])
    model = settings.model_part()
    assert type(model) is ModelSettings and not hasattr(model, "port") and not hasattr(model, "api_key")
    spec = ModelSpec.from_settings(model)
    assert spec == ModelSpec.from_settings(settings)
    assert (spec.source, spec.backend, spec.quantization, spec.n_ctx, spec.parallel, spec.n_threads) == \
        ("some/repo", "transformers", "int8", 1024, 2, 3)
    assert (spec.prefix_cache, spec.double_quant, spec.cache_type, spec.compute_dtype, spec.api_key) == \
        (False, False, "q8_0", "float16", "k")  # the remote engine's key, never the server's --api-key


def test_the_server_half_carries_the_server_flags_and_their_properties():
    settings = parse_args(["--listen", "--port", "9006", "--max-prompt-chars", "500", "--allow-remote",
                           "http://a:1/v1", "http://b:2/v1", "--n-ctx", "512"])
    server = settings.server_part()
    assert type(server) is ServerSettings and not hasattr(server, "n_ctx")
    assert (server.port, server.bind_host, server.exposed) == (9006, "0.0.0.0", True)
    assert server.allow_remote == ["http://a:1/v1", "http://b:2/v1"]
    assert server.limits == settings.limits and server.limits.max_prompt_chars == 500


def test_a_half_keeps_the_parsed_values_when_the_environment_changes(monkeypatch):
    settings = parse_args(["--n-ctx", "777", "--port", "9007"])
    monkeypatch.setenv("QUANTLAB_N_CTX", "4096")
    monkeypatch.setenv("QUANTLAB_PORT", "9999")
    assert settings.model_part().n_ctx == 777 and settings.server_part().port == 9007


def test_each_half_alone_reads_the_environment_and_checks_its_bounds(monkeypatch):
    monkeypatch.setenv("QUANTLAB_PARALLEL", "3")
    monkeypatch.setenv("QUANTLAB_RATE_LIMIT_RPM", "60")
    assert ModelSettings().parallel == 3 and ServerSettings().rate_limit_rpm == 60
    with pytest.raises(ValueError, match="cache_type"):
        ModelSettings(cache_type="q5_9")
    with pytest.raises(ValueError, match="port"):
        ServerSettings(port=70000)


def test_help_lists_each_flag_under_its_half():
    out = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, check=True).stdout
    model_section, server_section = out.split("\nmodel:", 1)[1].split("\nserver:", 1)
    for name in ModelSettings.model_fields:
        assert "--" + name.replace("_", "-") in model_section, name
        assert f"QUANTLAB_{name.upper()}" in model_section, name
    for name in ServerSettings.model_fields:
        assert "--" + name.replace("_", "-") in server_section, name
    assert "--threads" in model_section  # the shared name of --n-threads
