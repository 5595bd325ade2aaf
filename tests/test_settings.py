"""Flags over environment over defaults; GRADIO_SERVER_* honoured; nothing parsed at import."""

from __future__ import annotations

import subprocess
import sys

from serving.settings import parse_args


def test_defaults_serve_the_embedded_model_on_loopback(monkeypatch):
    for k in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "QUANTLAB_PORT", "QUANTLAB_MODEL"):
        monkeypatch.delenv(k, raising=False)
    s = parse_args([])
    assert (s.model, s.backend, s.host, s.port, s.no_model) == ("embedded", "llamacpp", "127.0.0.1", 7860, False)
    assert not s.exposed


def test_env_overrides_defaults_and_flags_override_env(monkeypatch):
    monkeypatch.setenv("QUANTLAB_PORT", "9001")
    monkeypatch.setenv("QUANTLAB_BACKEND", "transformers")
    monkeypatch.setenv("QUANTLAB_NO_MODEL", "true")
    s = parse_args([])
    assert (s.port, s.backend, s.no_model) == (9001, "transformers", True)
    s = parse_args(["--port", "9002", "--backend", "llamacpp", "--quantization", "Q8_0"])
    assert (s.port, s.backend, s.quantization) == (9002, "llamacpp", "Q8_0")


def test_gradio_server_variables_are_honoured(monkeypatch):
    monkeypatch.delenv("QUANTLAB_PORT", raising=False)
    monkeypatch.delenv("QUANTLAB_HOST", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    s = parse_args([])
    assert (s.bind_host, s.port, s.exposed) == ("0.0.0.0", 7861, True)


def test_listen_binds_everywhere():
    s = parse_args(["--listen"])
    assert s.bind_host == "0.0.0.0" and s.exposed


def test_importing_app_does_no_work():
    code = "import sys, app; assert 'torch' not in sys.modules and 'llama_cpp' not in sys.modules and 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_every_flag_with_its_env_var():
    out = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--backend", "--quantization", "--host", "--port", "--listen", "--auth", "--api-key",
                 "--no-model"):
        assert flag in out
    assert "QUANTLAB_API_KEY" in out


def test_a_zerogpu_space_defaults_to_transformers_one_request_at_a_time(monkeypatch):
    from serving.settings import parse_args

    assert (parse_args([]).backend, parse_args([]).parallel) == ("llamacpp", 4)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    s = parse_args([])
    assert (s.backend, s.parallel) == ("transformers", 1)
    assert parse_args(["--backend", "llamacpp", "--parallel", "2"]).backend == "llamacpp"
