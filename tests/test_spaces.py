"""Hugging Face Spaces: the README front matter is consistent with what we ship, and the app starts
the way a Space starts it and serves through its ``@spaces.GPU``-decorated handlers.

The Space test runs ``python app.py`` as a subprocess with the variables a Gradio Space sets and the
real ``spaces`` package installed (requirements-dev.txt pins it), then talks to it only over HTTP and
gradio_client. Off ZeroGPU (no ``SPACES_ZERO_GPU``), ``spaces.GPU`` returns the function itself; what
runs differently on ZeroGPU hardware is listed in deploy/README.md ("ZeroGPU").
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SPACE_PORT = 7860  # what a Space serves on; the app's default


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with the Space's YAML front matter"
    return yaml.safe_load(m.group(1))


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def test_front_matter_matches_requirements_and_entry_point():
    fm = front_matter()
    assert fm["sdk"] == "gradio"
    assert str(fm["sdk_version"]) == pinned("gradio")
    assert (ROOT / fm["app_file"]).is_file() and fm["app_file"] == "app.py"
    assert str(fm["python_version"]) == "3.11"
    assert fm["suggested_hardware"] in ("cpu-basic", "cpu-upgrade", "t4-small", "zero-a10g", "a10g-small")
    assert len(fm.get("short_description", "")) <= 60  # the Hub's limit
    assert set(fm) >= {"title", "emoji", "colorFrom", "colorTo"}


def test_requirements_dev_pins_the_spaces_package():
    """The Space test needs the real `spaces` package: a pinned test dependency, not a runtime one
    (a Space's own image brings `spaces`; requirements.txt must not)."""
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"^spaces==[\d.]+\s*(#.*)?$", dev, re.M), "requirements-dev.txt must pin spaces"
    runtime = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^spaces\b", runtime, re.M)


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def space_env(port: int, cache_home: Path | None = None) -> dict[str, str]:
    """What a Gradio Space sets (and nothing of this machine's QUANTLAB_* / GRADIO_SERVER_*). The
    Space's cache starts empty, in ``cache_home`` (XDG_CACHE_HOME), not in this user's ~/.cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANTLAB_", "GRADIO_SERVER_", "SPACE"))}
    if cache_home is not None:
        env["XDG_CACHE_HOME"] = str(cache_home)
    env.update({
        "SYSTEM": "spaces",
        "SPACE_ID": "quantlab/QuantLab",
        "SPACE_AUTHOR_NAME": "quantlab",
        "SPACE_REPO_NAME": "QuantLab",
        "SPACE_HOST": "quantlab-quantlab.hf.space",
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("SPACES_ZERO_GPU", None)  # CPU hardware: no ZeroGPU device API here
    if port != SPACE_PORT:
        env["GRADIO_SERVER_PORT"] = str(port)  # 7860 is taken on this machine: the only deviation
    return env


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """`python app.py` as a Space runs it (app_file: app.py, no flags), on 7860 when it is free."""
    pytest.importorskip("spaces", reason="pip install -r requirements-dev.txt brings the spaces package")
    port = SPACE_PORT if _port_is_free(SPACE_PORT) else _free_port()
    log = tmp_path_factory.mktemp("space") / "app.log"
    env = space_env(port, cache_home=tmp_path_factory.mktemp("space-cache"))
    # -X importtime: the interpreter itself lists every module the app imports (on stderr), so the
    # test can see that the app imported the real `spaces` package, without touching the app.
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "app.py"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"the app exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no /health 200 in 240 s:\n{log.read_text()[-4000:]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield {"url": url, "port": port, "proc": proc, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_space_binds_all_interfaces_on_7860_and_imports_spaces(space):
    if space["port"] == SPACE_PORT:  # the default path: no port variable, no flag
        assert "GRADIO_SERVER_PORT" not in space_env(SPACE_PORT)
    # GRADIO_SERVER_NAME=0.0.0.0: reachable on an address other than loopback too
    host_ip = socket.gethostbyname(socket.gethostname())
    if not host_ip.startswith("127."):
        assert httpx.get(f"http://{host_ip}:{space['port']}/live", timeout=5).status_code == 200
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{space['port']}"], capture_output=True, text=True)
    if listening.returncode == 0:
        assert "0.0.0.0:" in listening.stdout or "*:" in listening.stdout, listening.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in space["log"].read_text().splitlines()
                if line.startswith("import time:")}
    assert "spaces" in imported and "spaces.zero.decorator" in imported, "the app did not import the spaces package"
    assert "gradio" in imported
    health = httpx.get(space["url"] + "/health", timeout=5).json()
    assert health["model"]["backend"] == "llamacpp"  # CPU hardware: the embedded GGUF through llama.cpp


@pytest.mark.slow
def test_space_streams_chat_compare_and_evaluate(space):
    from gradio_client import Client

    client = Client(space["url"], verbose=False)
    # /chat: streamed partial replies, then (reply, stats)
    job = client.submit("Name three colours of the rainbow.", [], "", 32, 0.0, 1.0, 0, 1.0, 0, api_name="/chat")
    partials = [p for p in job]
    reply, stats = job.result()
    assert reply.strip() and stats["completion_tokens"] > 0 and stats["ttft_s"] > 0
    assert len(partials) >= 2 and partials[0][1] == {}, "the reply was not streamed"

    # /compare: a llama.cpp and a transformers (torch) variant side by side, streamed
    job = client.submit("Why is the sky blue?", ["llamacpp:Q8_0", "transformers:fp32"], "embedded", 24, 0.0, 0,
                        api_name="/compare")
    partials = list(job)
    final = job.result()
    assert [v["variant"] for v in final] == ["llamacpp:Q8_0", "transformers:fp32"]
    assert all(v["done"] and v["text"].strip() and v["stats"]["completion_tokens"] > 0 for v in final)
    assert len(partials) >= 2

    # /evaluate: a llama.cpp variant against the transformers fp32 reference on the same tokens
    rows = client.predict(["llamacpp:Q8_0"], "", 128, "embedded", "transformers:fp32", 64, api_name="/evaluate")
    assert [(r["variant"], r["is_reference"]) for r in rows] == [("transformers:fp32", True), ("llamacpp:Q8_0", False)]
    assert rows[1]["ppl"] > 1 and 0 <= rows[1]["top1_agreement"] <= 1 and rows[1]["kld_mean"] >= 0


@pytest.mark.slow
def test_space_stops_cleanly_on_sigterm(space):
    """A Space restart (new commit, settings change) sends SIGTERM: the app exits 0."""
    proc = space["proc"]
    proc.terminate()
    assert proc.wait(40) == 0
