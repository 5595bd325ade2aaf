"""The extra samplers, loader options and API documentation, through a real gradio_client on the real
app serving the embedded model (llama.cpp)."""

from __future__ import annotations

import httpx
import pytest
from gradio_client import Client

from tests.conftest import LiveServer, make_settings

CORE = dict(system_prompt="", max_new_tokens=24, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0)
PROMPT = "List the days of the week."


def chat(client: Client, message: str = PROMPT, **params):
    """/chat with CORE's nine-argument prefix plus named later parameters (stop, min_p, ...)."""
    return client.predict(message, [], *{**CORE, **{k: v for k, v in params.items() if k in CORE}}.values(),
                          **{k: v for k, v in params.items() if k not in CORE}, api_name="/chat")


def test_a_nine_argument_call_still_works_and_matches_the_neutral_samplers(client):
    old_reply, old_stats = client.predict(PROMPT, [], *CORE.values(), api_name="/chat")
    assert old_reply.strip() and old_stats["completion_tokens"] > 0
    neutral, _ = chat(client, min_p=0.0, typical_p=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                      dry_multiplier=0.0, xtc_probability=0.0, mirostat=0, no_repeat_ngram_size=0, stop="",
                      enable_thinking="auto")
    assert neutral == old_reply


def test_min_p_one_keeps_only_the_top_token_so_a_hot_sample_is_the_greedy_text(client):
    greedy, _ = chat(client)
    hot = [chat(client, temperature=1.5, seed=seed, min_p=1.0)[0] for seed in (1, 2)]
    assert hot == [greedy, greedy]
    unconstrained = {chat(client, temperature=1.5, seed=seed)[0] for seed in (1, 2)}
    assert unconstrained != {greedy}, "without min_p a hot sample should differ (else the test proves nothing)"


def repeated_lines(text: str) -> int:
    """How many lines repeat an earlier line, ignoring the list numbers ("2. Mona Ali Ali")."""
    lines = [line.split(".", 1)[-1].strip() for line in text.splitlines() if line.strip()]
    return len(lines) - len(set(lines))


def test_a_strong_presence_penalty_changes_a_repetitive_reply(client):
    prompt = "List ten animals."  # greedy, the small model loops on one line
    plain, _ = chat(client, prompt, max_new_tokens=40)
    assert repeated_lines(plain) >= 2, plain
    penalised, _ = chat(client, prompt, max_new_tokens=40, presence_penalty=2.0)
    assert penalised != plain
    assert repeated_lines(penalised) < repeated_lines(plain), (plain, penalised)


def test_stop_strings_end_the_reply_before_them(client):
    full, _ = chat(client, max_new_tokens=40)
    cut = full.strip().split()[2]  # a word inside the reply
    reply, stats = chat(client, max_new_tokens=40, stop=f"{cut}\nnever-seen")
    assert cut not in reply and full.startswith(reply)
    assert stats["finish_reason"] == "stop"


def test_a_sampler_the_backend_lacks_is_refused_by_name_and_the_server_keeps_serving(client):
    with pytest.raises(Exception, match="no_repeat_ngram_size"):
        chat(client, no_repeat_ngram_size=3)
    with pytest.raises(Exception, match="enable_thinking"):
        chat(client, enable_thinking="maybe")
    with pytest.raises(Exception, match="min_p"):
        chat(client, min_p=2.0)
    assert chat(client)[0].strip()


def test_every_endpoint_parameter_has_its_own_description(live_app):
    info = httpx.get(live_app.url + "/gradio_api/info").json()["named_endpoints"]
    for name in ("/chat", "/complete", "/load_model", "/unload_model", "/model_status", "/stats", "/compare",
                 "/evaluate", "/cached_models", "/delete_cached"):
        assert name in info, f"{name} is not on the API page"
        assert info[name]["description"].strip(), f"{name} has no description"
    undescribed = [(name, p["parameter_name"]) for name, ep in info.items() for p in ep["parameters"]
                   if not p["python_type"]["description"].strip() or p["label"] != p["parameter_name"]]
    assert not undescribed, f"parameters without a description: {undescribed}"
    chat_params = [p["parameter_name"] for p in info["/chat"]["parameters"]]
    assert chat_params[:9] == ["message", "history", "system_prompt", "max_new_tokens", "temperature", "top_p",
                               "top_k", "repetition_penalty", "seed"]
    assert chat_params[9:] == ["min_p", "typical_p", "presence_penalty", "frequency_penalty", "dry_multiplier",
                               "xtc_probability", "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta",
                               "no_repeat_ngram_size", "stop", "enable_thinking", "files", "model", "dry_base",
                               "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers"]
    assert len(info["/chat"]["returns"]) == 2, "/chat answers (reply, stats) as two outputs"
    load_doc = info["/load_model"]["description"]
    for quant in ("Q4_K_M", "nf4", "int8", "as served"):  # every backend's menu
        assert quant in load_doc
    assert "/v1" in info["/chat"]["description"]
    page = httpx.get(live_app.url + "/").text + httpx.get(live_app.url + "/config").text
    assert "/v1/chat/completions" in page


def test_load_model_takes_loader_options_and_model_status_shows_them(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        c = Client(srv.url, verbose=False)
        try:
            done = c.predict("embedded", "llamacpp", "as file", "", "", "", 1024, 2, 1, 0, "q8_0", False,
                             api_name="/load_model")
            assert done.startswith("Loaded")
            status = c.predict(api_name="/model_status")
            assert status["model"]["context_length"] == 1024
            opts = status["options"]
            assert (opts["n_ctx"], opts["parallel"], opts["n_threads"], opts["cache_type"]) == (1024, 2, 1, "q8_0")
            reply, _ = c.predict("Say hello.", [], *list(CORE.values())[:-1], 0, api_name="/chat")
            assert reply.strip(), "a quantized KV cache (with flash attention) still generates"
            with pytest.raises(Exception, match="cache_type"):
                c.predict("embedded", "llamacpp", "as file", "", "", "", 1024, 2, 1, 0, "q5_9", api_name="/load_model")
            with pytest.raises(Exception, match="n_ctx"):
                c.predict("embedded", "llamacpp", "as file", "", "", "", 8, api_name="/load_model")
            assert c.predict(api_name="/model_status")["options"]["cache_type"] == "q8_0", "a refused load changed it"
        finally:
            c.close()
            srv.manager.close()


# --- the request and option builders, without a model (fast tier) ------------------------------


def test_chat_inputs_become_the_request_the_backend_sees():
    from serving.requests import build_request

    plain = build_request("hi", [], "", 16, 0.0, 1.0, 0, 1.0, 0)
    assert plain.params.samplers_set() == () and plain.template_kwargs == ()
    tuned = build_request("hi", [], "", 16, 0.0, 1.0, 0, 1.0, 0, "END\n\nSTOP", None, "off",
                          min_p=0.1, mirostat="2", no_repeat_ngram_size=3.0)
    assert tuned.params.min_p == 0.1 and tuned.params.mirostat == 2 and tuned.params.no_repeat_ngram_size == 3
    assert tuned.params.samplers_set() == ("min_p", "mirostat", "no_repeat_ngram_size")
    assert tuned.stop == ("END", "STOP")
    assert tuned.template_kwargs == (("enable_thinking", False),)
    assert build_request("hi", [], "", 16, 0.0, 1.0, 0, 1.0, 0, enable_thinking="on").template_kwargs == (
        ("enable_thinking", True),)


@pytest.mark.parametrize("options,needle", [
    ({"cache_type": "q5_9"}, "cache_type"), ({"n_ctx": 8}, "n_ctx"), ({"parallel": 65}, "parallel"),
    ({"flash_attn": "yes"}, "flash_attn"), ({"compute_dtype": "int4"}, "compute_dtype"), ({"n_threads": 1.5}, "n_threads"),
])
def test_bad_loader_options_are_refused_by_name(options, needle):
    from backends.errors import InvalidRequest
    from serving.requests import loader_options

    with pytest.raises(InvalidRequest, match=needle):
        loader_options(**options)


def test_loader_options_leave_out_what_keeps_the_servers_default():
    from serving.requests import loader_options

    assert loader_options(n_ctx=None, cache_type="", device_map="  ", n_threads=0, flash_attn=None) == {}
    assert loader_options(n_ctx="1024", cache_type="Q8_0", n_gpu_layers=0, flash_attn=True) == {
        "n_ctx": 1024, "cache_type": "q8_0", "n_gpu_layers": 0, "flash_attn": "on"}  # true/false: on/off


def test_local_models_lists_gguf_files_and_checkpoint_folders_as_absolute_paths(tmp_path, monkeypatch):
    from tests.conftest import make_manager, make_services

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "models" / "qwen").mkdir(parents=True)
    (tmp_path / "models" / "qwen" / "config.json").write_text("{}")
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    found = make_services(make_manager()).local_models(tmp_path.joinpath("models").relative_to(tmp_path))
    assert found == ["embedded", str(tmp_path / "models" / "tiny.gguf"), str(tmp_path / "models" / "qwen")]


def test_monitor_charts_number_requests_as_whole_numbers_and_show_the_models_footprint():
    from ui.monitor import latency_frame, memory_frame

    one = [{"request_id": 1, "ttft_s": 0.05, "tpot_s": 0.01}]
    frame = latency_frame(one)
    assert list(frame["request"]) == ["#1", "#1"]  # a category: no 0.5 ticks, and one request is a point
    assert sorted(frame["metric"]) == ["TPOT", "TTFT"]
    sample = {"time": 0.0, "process": {"rss_bytes": 300 * 2**20}, "gpu": {"devices": []}}
    mem = memory_frame([sample], footprint_mib=160.0)
    assert dict(zip(mem["series"], mem["MiB"])) == {"process RSS": 300.0, "model footprint": 160.0}
    assert set(memory_frame([sample])["series"]) == {"process RSS"}
