"""What a client with a wrong URL or a wrong input shape is told: an unknown path anywhere answers an
OpenAI-shaped 404 naming it and where the API is (not FastAPI's bare ``{"detail": "Not Found"}``), each
dialect's own prefix keeps its own shape, and embeddings given token ids (langchain's default) get a
400 that names the fix. The server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

from app import LiveServer
from tests.live_server import make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(cache_dir):
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv:
        yield srv


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/v2/chat/completions"),
                                         ("POST", "/chat/completions"), ("DELETE", "/models-x")])
def test_an_unknown_path_gets_an_openai_shaped_404(server, method, path):
    r = httpx.request(method, server.url + path, json={}, timeout=30)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "unknown_url" and path in err["message"] and "/v1" in err["message"]
    assert int(r.headers["content-length"]) == len(r.content)


def test_the_openai_client_with_a_wrong_base_url_is_told_where_the_api_is(server):
    client = openai.OpenAI(base_url=server.url + "/v2", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert "/v1" in str(caught.value)


def test_each_prefix_keeps_its_own_shape_and_the_ui_still_loads(server):
    assert httpx.get(server.url + "/api/nope", timeout=30).json().keys() == {"error"}  # Ollama's shape
    assert isinstance(httpx.get(server.url + "/api/nope", timeout=30).json()["error"], str)
    assert httpx.get(server.url + "/v1/nope", timeout=30).json()["error"]["code"] == "unknown_url"
    page = httpx.get(server.url + "/", timeout=60)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize("ids", [[15496, 995], [[15496, 995], [40, 1101]]])
def test_embeddings_of_token_ids_name_the_fix(server, ids):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="default", input=ids)
    assert "check_embedding_ctx_length=False" in str(caught.value)
    assert httpx.get(server.url + "/live", timeout=30).status_code == 200
