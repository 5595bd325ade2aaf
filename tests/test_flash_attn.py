"""llama.cpp flash attention: ``auto`` by default (llama-server's ``-fa auto``: on wherever the device
supports it, so on for the CPU), ``on`` or ``off`` by choice, the older true/false still accepted;
llama.cpp itself is asked for what was chosen (its own log says so), and the loaded model's details
(/health, the Model tab) show it. JSON-schema strings refuse raw control characters (which flash
attention's greedy text ran into)."""

from __future__ import annotations

import contextlib
import io
import json

import httpx
import pytest

from backends.base import Constraint, ModelSpec
from backends.errors import InvalidRequest
from backends.options import LOADER_BY_NAME, parse_flash_attn
from serving.requests import loader_options
from serving.settings import parse_args


# --- fast: the setting's forms -------------------------------------------------------------------------

@pytest.mark.parametrize("given,kept", [(None, None), ("", None), ("auto", "auto"), ("ON", "on"), (" off ", "off"),
                                        (True, "on"), (False, "off"), ("true", "on"), ("false", "off")])
def test_the_setting_takes_auto_on_off_and_the_older_true_false(given, kept):
    assert parse_flash_attn(given) == kept
    assert ModelSpec(source="m.gguf", backend="llamacpp", flash_attn=given).flash_attn == (kept or "auto")


@pytest.mark.parametrize("bad", ["yes", "enabled", 1, 0.5])
def test_anything_else_is_refused_by_name(bad):
    with pytest.raises(InvalidRequest) as err:
        loader_options(flash_attn=bad)
    assert err.value.param == "flash_attn" and "auto, on or off" in str(err.value)


def test_the_default_is_auto_everywhere_it_is_declared(monkeypatch):
    monkeypatch.delenv("QUANTLAB_FLASH_ATTN", raising=False)
    assert LOADER_BY_NAME["flash_attn"].default == "auto" == ModelSpec(source="m", backend="llamacpp").flash_attn
    assert ModelSpec.from_settings(parse_args([])).flash_attn == "auto"
    assert loader_options(flash_attn=True) == {"flash_attn": "on"} and loader_options(flash_attn="") == {}


@pytest.mark.parametrize("argv,chosen", [(["--flash-attn"], "on"), (["--flash-attn", "off"], "off"),
                                         (["--no-flash-attn"], "off"), (["--flash-attn", "auto", "--n-ctx", "512"], "auto")])
def test_the_cli_flag_alone_means_on_and_takes_a_value(monkeypatch, argv, chosen):
    monkeypatch.delenv("QUANTLAB_FLASH_ATTN", raising=False)
    assert ModelSpec.from_settings(parse_args(argv)).flash_attn == chosen


def test_the_environment_takes_the_older_false(monkeypatch):
    monkeypatch.setenv("QUANTLAB_FLASH_ATTN", "false")
    assert parse_args([]).flash_attn == "off"
    monkeypatch.setenv("QUANTLAB_FLASH_ATTN", "maybe")
    with pytest.raises(Exception, match="flash_attn"):
        parse_args([])


def test_a_json_schema_string_refuses_raw_control_characters():
    """JSON forbids a raw newline (or any character below 0x20) inside a string: json.loads refuses
    the reply. llama-cpp-python's converter allowed them; the grammar given to llama.cpp must not."""
    from backends.llamacpp.sampling import grammar_text

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    char = next(line for line in grammar_text(Constraint("json_schema", json.dumps(schema))).splitlines()
                if line.startswith("char ::="))
    assert char.startswith(r'char ::= [^"\\\x7F\x00-\x1F] |'), char


# --- slow: llama.cpp is asked for it, and says what it did ---------------------------------------------

@pytest.mark.parametrize("setting,asked", [("auto", "auto"), ("on", "enabled"), ("off", "disabled")])
def test_llama_cpp_is_asked_for_the_setting_and_auto_turns_it_on_for_the_cpu(embedded_gguf, setting, asked):
    import llama_cpp.llama_cpp as C

    from backends.llamacpp.open import kv_cache_options, open_llama

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):  # llama-cpp-python's log callback prints to sys.stderr
        llm = open_llama(str(embedded_gguf), n_ctx=256, verbose=True,
                         **kv_cache_options(ModelSpec(source=str(embedded_gguf), backend="llamacpp", flash_attn=setting)))
        llm.close()
    log = buf.getvalue()
    assert f"flash_attn            = {asked}" in log, log[-3000:]
    assert ("FLASH_ATTN_EXT" in log) == (setting != "off")  # the graph's attention nodes
    if setting == "auto":
        assert "Flash Attention enabled" in log  # llama.cpp's own choice for the CPU
    assert C.LLAMA_FLASH_ATTN_TYPE_ENABLED == 1  # the constant borrowed for "auto" is given back


def test_health_shows_the_default_and_load_model_takes_the_older_false(cache_dir, live_app):
    """/health shows what the shared app loaded by default; a server loaded through the Gradio API with
    ``flash_attn=False`` (the older form) runs without it, says so, and still answers."""
    from gradio_client import Client

    from tests.conftest import LiveServer, make_settings

    assert httpx.get(live_app.url + "/health").json()["model"]["flash_attn"] == "auto: on"
    with LiveServer(make_settings(cache_dir=cache_dir)) as srv:
        c = Client(srv.url, verbose=False)
        try:
            assert "Loaded" in c.predict("embedded", "llamacpp", "as file", n_ctx=512, parallel=1, flash_attn=False,
                                         api_name="/load_model")
            health = httpx.get(srv.url + "/health").json()
            assert health["model"]["flash_attn"] == "off" and health["options"]["flash_attn"] == "off"
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=600, json={
                "model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
            with pytest.raises(Exception, match="flash_attn"):
                c.predict("embedded", "llamacpp", "as file", flash_attn="sometimes", api_name="/load_model")
            assert httpx.get(srv.url + "/health").json()["model"]["flash_attn"] == "off"  # the model kept serving
        finally:
            c.close()
            srv.manager.close()
