"""Runs a built image's filesystem the way a container engine would and checks it over HTTP.

Called by deploy/check-image.sh with the mounted image (``podman image mount``) and its
``podman image inspect`` output. Standard library only: it runs on the host's
python3, independent of the app's environment.

The image runs under ``chroot`` in a private mount namespace, as the image's USER, with its ENV,
WORKDIR and CMD (plus QUANTLAB_PORT, like ``docker run -e``); the image stays read-only, with tmpfs
on /tmp, /data and the user's home (as Kubernetes' readOnlyRootFilesystem + emptyDir/PVC would).
Checks: /live, /health 200 (cold start timed), the process's uid, the image's own HEALTHCHECK
command, a /v1 chat completion, a Gradio /chat stream over Gradio's REST SSE, /metrics, and SIGTERM
during a /v1 stream (the stream finishes, the process exits 0). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def passwd_entry(rootfs: Path, uid: int) -> tuple[str, str]:
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if len(parts) >= 6 and parts[2] == str(uid):
            return parts[0], parts[5]
    return "", "/"


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, str]:
    """USER as the engine resolves it: uid[:gid] or names, looked up in the image's own files."""
    name, _, group = (user or "0").partition(":")
    if name.isdigit():
        uid = int(name)
    else:
        uid = next(int(l.split(":")[2]) for l in (rootfs / "etc/passwd").read_text().splitlines()
                   if l.split(":")[0] == name)
    if group.isdigit():
        gid = int(group)
    elif group:
        gid = next(int(l.split(":")[2]) for l in (rootfs / "etc/group").read_text().splitlines()
                   if l.split(":")[0] == group)
    else:
        gid = next((int(l.split(":")[3]) for l in (rootfs / "etc/passwd").read_text().splitlines()
                    if l.split(":")[2] == str(uid)), uid)
    return uid, gid, passwd_entry(rootfs, uid)[1]


def chroot_argv(rootfs: Path, config: dict, env: dict[str, str], argv: list[str]) -> list[str]:
    """The host command that runs ``argv`` in the image: private mounts, chroot, USER, ENV, WORKDIR."""
    uid, gid, home = resolve_user(rootfs, config.get("User", ""))
    mounts = [
        'mount -t proc proc "$R/proc"',
        'mount --rbind /dev "$R/dev"',
        'mount --rbind -o ro /sys "$R/sys" 2>/dev/null || true',
        'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"',
    ]
    for vol in list((config.get("Volumes") or {}).keys()) + ([home] if home not in ("", "/") else []):
        if not (rootfs / vol.lstrip("/")).is_dir():
            continue  # (an engine would create it; the image's own are checked by the caller)
        mounts.append(f'mount -t tmpfs -o uid={uid},gid={gid},mode=0755 tmpfs "$R{vol}"')
    for f in ("/etc/hosts", "/etc/resolv.conf"):  # what an engine injects
        if (rootfs / f.lstrip("/")).is_file():
            mounts.append(f'mount --bind -o ro {f} "$R{f}"')
    workdir = config.get("WorkingDir") or "/"
    envs = [f"{k}={v}" for k, v in env.items()]
    inner = f'cd {shlex.quote(workdir)} && exec "$@"'
    script = "set -e; R=\"$1\"; shift; " + "; ".join(mounts) + \
        f'; exec chroot --userspec={uid}:{gid} "$R" /usr/bin/env -i "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(rootfs),
            *envs, "/bin/sh", "-c", inner, "sh", *argv]


def image_env(config: dict, port: int, rootfs: Path) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    uid, _, home = resolve_user(rootfs, config.get("User", ""))
    env.setdefault("HOME", home)
    env.setdefault("HOSTNAME", "quantlab-check")
    env["QUANTLAB_PORT"] = str(port)  # docker run -e QUANTLAB_PORT=...: a free port on this host
    return env


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_json(url: str, body: dict, timeout: float = 120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def sse_lines(resp):
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if line:
            yield line


def gradio_chat(base: str) -> dict:
    """Gradio's REST API: POST /gradio_api/call/chat -> event_id, then the SSE stream of the event."""
    data = ["Hello! Who are you?", [], "", 32, 0.0, 1.0, 0, 1.0, 0]
    with post_json(f"{base}/gradio_api/call/chat", {"data": data}) as r:
        event_id = json.load(r)["event_id"]
    events, last = [], None
    with urllib.request.urlopen(f"{base}/gradio_api/call/chat/{event_id}", timeout=120) as r:
        event = None
        for line in sse_lines(r):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append(event)
                last = json.loads(line.split(":", 1)[1])
                if event in ("complete", "error"):
                    break
    assert events and events[-1] == "complete", f"/chat ended with {events[-1:]}: {last}"
    reply, stats = last
    assert isinstance(reply, str) and reply.strip(), f"/chat gave an empty reply: {last}"
    assert stats.get("completion_tokens", 0) > 0, f"/chat stats: {stats}"
    return {"reply": reply, "generating_events": events.count("generating"), "stats": stats}


def v1_chat(base: str) -> dict:
    body = {"model": "default", "messages": [{"role": "user", "content": "Say hello in five words."}],
            "max_tokens": 24, "temperature": 0, "seed": 0}
    with post_json(f"{base}/v1/chat/completions", body) as r:
        out = json.load(r)
    text = out["choices"][0]["message"]["content"]
    assert text.strip() and out["usage"]["completion_tokens"] > 0, out
    return {"text": text, "usage": out["usage"], "model": out["model"]}


def sigterm_during_stream(base: str, proc: subprocess.Popen, port: int) -> dict:
    """A /v1 stream is running when SIGTERM arrives: it must finish ([DONE]), the port stops
    accepting, and the process exits 0 within the shutdown timeout (30 s: the stream is kept short
    so that it ends inside it even on a busy 2-core machine)."""
    body = {"model": "default", "stream": True, "max_tokens": 64, "temperature": 0, "seed": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]}
    got: dict = {"chunks": 0, "after_term": 0, "done": False, "finish": None, "error": None}
    first = threading.Event()
    termed = threading.Event()

    def reader():
        try:
            with post_json(f"{base}/v1/chat/completions", body) as r:
                for line in sse_lines(r):
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        got["done"] = True
                        break
                    chunk = json.loads(payload)
                    got["chunks"] += 1
                    got["after_term"] += termed.is_set()
                    for c in chunk.get("choices", []):
                        got["finish"] = c.get("finish_reason") or got["finish"]
                    first.set()
        except Exception as exc:  # noqa: BLE001 - reported below
            got["error"] = repr(exc)
        finally:
            first.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert first.wait(60), "the /v1 stream produced nothing in 60 s"
    t_term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    termed.set()
    time.sleep(0.3)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            got["new_connections_after_term"] = "accepted"
    except OSError:
        got["new_connections_after_term"] = "refused"
    t.join(60)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        raise AssertionError("the app did not exit within 60 s of SIGTERM")
    got["exit_code"] = rc
    got["exit_seconds_after_term"] = round(time.monotonic() - t_term, 2)
    assert got["error"] is None, f"the stream broke on SIGTERM: {got['error']}"
    assert got["done"], f"the stream did not finish with [DONE] after SIGTERM: {got}"
    assert rc == 0, f"exit code {rc} after SIGTERM (expected 0)"
    return got


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rootfs", required=True, type=Path)
    ap.add_argument("--inspect", required=True, type=Path, help="podman image inspect IMAGE > FILE")
    ap.add_argument("--report", type=Path)
    ap.add_argument("--image-size", type=int, default=-1)
    ap.add_argument("--build-seconds", type=int, default=-1)
    ap.add_argument("--start-timeout", type=float, default=300)
    a = ap.parse_args()
    rootfs, inspect = a.rootfs, json.loads(a.inspect.read_text())[0]
    config = inspect["Config"]
    cmd = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    assert cmd == ["python", "app.py", "--listen"], f"unexpected CMD {cmd}"
    port = free_port()
    env = image_env(config, port, rootfs)
    base = f"http://127.0.0.1:{port}"
    report: dict = {"image_size_bytes": a.image_size, "image_size_mib": round(a.image_size / 2**20),
                    "build_seconds": a.build_seconds, "cmd": cmd, "user": config.get("User"), "port": port}
    log_path = (a.report.parent if a.report else Path("/tmp")) / "app.log"

    def say(msg):
        print(f"[image-smoke] {msg}", flush=True)

    def run_in_image(argv: list[str], timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(chroot_argv(rootfs, config, env, argv), capture_output=True, text=True, timeout=timeout)

    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(chroot_argv(rootfs, config, env, cmd), stdout=log, stderr=subprocess.STDOUT)
    ok = False
    try:
        t_live = seen_503 = None
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the app exited with {proc.returncode} before /health answered 200")
            if time.monotonic() - t0 > a.start_timeout:
                raise AssertionError(f"no /health 200 within {a.start_timeout} s")
            try:
                if t_live is None and get(f"{base}/live", 2)[0] == 200:
                    t_live = time.monotonic() - t0
                code, body = get(f"{base}/health", 2)
                if code == 503:
                    seen_503 = True
                if code == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
                pass
            time.sleep(0.1)
        report["cold_start_live_s"] = round(t_live, 2) if t_live is not None else None
        report["cold_start_health_200_s"] = round(time.monotonic() - t0, 2)
        report["health_503_while_loading"] = bool(seen_503)
        report["health"] = json.loads(body)
        say(f"/live 200 after {report['cold_start_live_s']} s, /health 200 after {report['cold_start_health_200_s']} s")

        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid_line = next(l for l in status.splitlines() if l.startswith("Uid:"))
        report["process_uid"] = int(uid_line.split()[1])
        assert report["process_uid"] == resolve_user(rootfs, config.get("User", ""))[0] != 0, uid_line

        hc = (inspect.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test") or []
        assert hc and hc[0] == "CMD", f"the image has no HEALTHCHECK CMD (built without --format docker?): {hc}"
        run = run_in_image(hc[1:])
        assert run.returncode == 0, f"HEALTHCHECK failed: {run.stdout}{run.stderr}"
        report["healthcheck"] = "passes"
        say("HEALTHCHECK command passes")

        report["v1_chat"] = v1_chat(base)
        say(f"/v1 chat: {report['v1_chat']['text']!r}")
        report["gradio_chat"] = gradio_chat(base)
        say(f"Gradio /chat: {report['gradio_chat']['reply']!r} ({report['gradio_chat']['generating_events']} streamed events)")
        code, metrics = get(f"{base}/metrics")
        assert code == 200 and b"quantlab:time_to_first_token_seconds" in metrics, "no quantlab: metrics"
        report["metrics"] = "ok"

        report["sigterm"] = sigterm_during_stream(base, proc, port)
        say(f"SIGTERM during a stream: {report['sigterm']}")

        run = run_in_image(["python", "-c", "import torch, llama_cpp, gradio, transformers, sys; "
                            "print(sys.version.split()[0], torch.__version__, llama_cpp.__version__, "
                            "gradio.__version__, transformers.__version__)"])
        assert run.returncode == 0, run.stderr
        py, torch_v, llama_v, gradio_v, tf_v = run.stdout.split()
        report["versions"] = {"python": py, "torch": torch_v, "llama_cpp": llama_v, "gradio": gradio_v, "transformers": tf_v}
        assert torch_v.endswith("+cpu"), f"the image has torch {torch_v}, not the CPU build"
        ok = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        report["ok"] = ok
        if a.report:
            a.report.write_text(json.dumps(report, indent=2))
        if not ok:
            print(f"[image-smoke] app log ({log_path}):\n" + log_path.read_text()[-6000:], file=sys.stderr)
    say(json.dumps({k: report[k] for k in ("image_size_mib", "build_seconds", "cold_start_health_200_s")}))
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
