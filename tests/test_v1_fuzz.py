"""schemathesis against the app's own OpenAPI for /v1: generated requests, valid and invalid by the
schema, bounded in number (CI-sized; QUANTLAB_FUZZ_EXAMPLES raises it). No answer may be a 5xx, and
every error is OpenAI-shaped."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from backends.base import ModelSpec
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("QUANTLAB_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def small_app(tmp_path_factory):
    # a small context bounds every generated request's cost (max_tokens is only an upper bound)
    with LiveServer(make_settings(cache_dir=tmp_path_factory.mktemp("cache"), n_ctx=256)) as srv:
        srv.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=256, parallel=2))
        yield srv


@pytest.mark.parametrize("path,method,mode", [
    ("/v1/chat/completions", "POST", GenerationMode.POSITIVE),
    ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE),  # bodies that break the schema
    ("/v1/completions", "POST", GenerationMode.POSITIVE),
    ("/v1/responses", "POST", GenerationMode.POSITIVE),
    ("/v1/responses", "POST", GenerationMode.NEGATIVE),
    ("/v1/completions", "POST", GenerationMode.NEGATIVE),
    ("/v1/embeddings", "POST", GenerationMode.POSITIVE),
    ("/tokenize", "POST", GenerationMode.POSITIVE),
    ("/detokenize", "POST", GenerationMode.POSITIVE),
    ("/v1/models", "GET", GenerationMode.POSITIVE),  # no inputs: nothing to negate
])
def test_v1_never_answers_5xx(small_app, path, method, mode):
    schema = schemathesis.openapi.from_url(small_app.url + "/openapi.json")
    operation = schema[path][method]
    seen: list[int] = []

    @settings(max_examples=(EXAMPLES if "chat" in path else EXAMPLES // 2) if method == "POST" else 5, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=small_app.url, timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.status_code, response.text[:300])
        if response.status_code >= 400:
            err = response.json()["error"]
            assert err["message"] and "Internal error" not in err["message"]

    check()
    assert seen, "schemathesis generated nothing"
    assert small_app.manager.current is not None
