"""A vision GGUF from a Hugging Face Hub repo brings the repo's projector (mmproj) with it: picked
from the repo's files (quantization match, else F16/BF16, else the first), downloaded next to the
model, named in the load details; a projector named with mmproj always wins. The tiny vision model
(``tests/vision_model.py``) is put in a real hub-cache layout (offline: the snapshot is listed) and
behind the local stand-in for the Hub's HTTP endpoints (online: ``list_repo_files``,
``hf_hub_download``), loaded by repo id through the app's loader, and must see the picture exactly
as the local GGUF + mmproj pair does."""

from __future__ import annotations

import pytest

from backends.base import ChatRequest, Message, ModelSpec, SamplingParams
from backends.files import hub_projector
from serving.images import decode_image
from tests.conftest import make_manager
from tests.test_hub import add_repo, hub, online  # noqa: F401 (fixtures)
from tests.vision_model import png, vision_gguf

REPO = "quantlab-test/tiny-vlm-gguf"
MODEL = "tiny-vlm-F16.gguf"
REAL = "mmproj-tiny-vlm-F16.gguf"
BROKEN = "mmproj-BF16.gguf"  # first by name, and not a projector: picking it would fail the load
RED = png((255, 0, 0))


def test_the_projector_is_picked_by_quantization_then_f16_bf16_then_name():
    files = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-Q8_0.gguf", "mmproj-bf16.gguf", "mmproj-f16.gguf"]
    assert hub_projector.pick(files, "m-Q8_0.gguf")[0] == "mmproj-Q8_0.gguf"
    assert hub_projector.pick(files, "m-Q4_K_M.gguf") == ("mmproj-f16.gguf", "F16: no projector matches the "
                                                          "model's Q4_K_M; the repo has 3")
    assert hub_projector.pick(["m.gguf", "mmproj-bf16.gguf", "mmproj-Q8_0.gguf"], "m.gguf")[0] == "mmproj-bf16.gguf"
    assert hub_projector.pick(["m.gguf", "mmproj-b.gguf", "mmproj-a.gguf"], "m.gguf")[0] == "mmproj-a.gguf"
    assert hub_projector.pick(["Q4/m-Q4_0.gguf", "Q4/mmproj-F16.gguf", "Q8/mmproj-F16.gguf"],
                              "Q4/m-Q4_0.gguf")[0] == "Q4/mmproj-F16.gguf"  # its own folder's
    assert hub_projector.pick(["m-Q4_0.gguf", "README.md"], "m-Q4_0.gguf") is None  # text-only
    assert hub_projector.quant_of("Model-7B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert hub_projector.quant_of("mmproj-model-f16.gguf") == "F16" and hub_projector.quant_of("model.gguf") is None


@pytest.fixture(scope="module")
def pair(cache_dir):
    model = vision_gguf(cache_dir)
    return model, model.with_name("mmproj-" + model.name)


def sees(manager, image: bytes | None = RED) -> str:
    images = (decode_image(image, "image"),) if image else ()
    request = ChatRequest((Message("user", "What is in the picture?", images=images),),
                          SamplingParams(max_new_tokens=6, temperature=0.0, seed=0))
    return manager.generate(request)[0]


@pytest.fixture(scope="module")
def expected(pair, cache_dir):
    """The replies of the local pair (GGUF + mmproj beside it): with the picture, and without."""
    manager = make_manager(cache_dir=cache_dir)
    manager.load(ModelSpec(source=str(pair[0]), backend="llamacpp", n_ctx=512))
    try:
        return sees(manager), sees(manager, None)
    finally:
        manager.unload()


def load_and_ask(spec: ModelSpec, cache_dir) -> tuple[dict, str]:
    manager = make_manager(cache_dir=cache_dir)
    info = manager.load(spec)
    try:
        return info.details, sees(manager)
    finally:
        manager.unload()


@pytest.mark.slow
def test_offline_a_hub_gguf_brings_its_projector_and_sees_the_picture(hub, pair, expected, cache_dir):
    model, projector = pair
    add_repo(hub, REPO, {MODEL: model, REAL: projector, BROKEN: b"not a projector", "README.md": b"# tiny\n"})
    details, reply = load_and_ask(ModelSpec(source=REPO, gguf_file=MODEL, backend="llamacpp", n_ctx=512), cache_dir)
    assert details["vision"] and details["mmproj"] == REAL
    assert details["mmproj_from"].startswith(f"{REAL} from {REPO} (matches the model's F16")
    assert reply == expected[0] and reply != expected[1]  # the picture was seen, as with the local pair


@pytest.mark.slow
def test_a_named_projector_wins_over_the_repos(hub, pair, expected, cache_dir):
    model, projector = pair
    add_repo(hub, REPO, {MODEL: model, "mmproj-tiny-vlm-F16.gguf": b"not a projector"})
    spec = ModelSpec(source=REPO, gguf_file=MODEL, backend="llamacpp", n_ctx=512, mmproj=str(projector))
    details, reply = load_and_ask(spec, cache_dir)
    assert details["mmproj"] == projector.name and "mmproj_from" not in details
    assert reply == expected[0]


@pytest.mark.slow
def test_online_the_repos_projector_is_listed_and_downloaded_beside_the_model(online, hub, pair, expected, cache_dir):
    model, projector = pair
    fake = online({REPO: {MODEL: model, REAL: projector, BROKEN: b"not a projector", "README.md": b"# tiny\n"}})
    # no file named: the one model of the repo (its projectors are not models to choose between)
    details, reply = load_and_ask(ModelSpec(source=REPO, backend="llamacpp", n_ctx=512), cache_dir)
    assert ("GET", f"/api/models/{REPO}/tree/main", None) in fake.requests  # list_repo_files
    fetched = {r[1].rsplit("/", 1)[-1] for r in fake.requests if r[0] == "GET" and "/resolve/" in r[1]}
    assert fetched == {MODEL, REAL}  # the other projector is not downloaded
    snapshot = next((hub / ("models--" + REPO.replace("/", "--")) / "snapshots").iterdir())
    assert (snapshot / REAL).read_bytes() == projector.read_bytes()
    assert details["mmproj"] == REAL and reply == expected[0]
