#!/usr/bin/env bash
# Builds the CPU image from ./Dockerfile and runs it, without a Docker engine and without a registry:
#
#   1. base: unless BASE_IMAGE names an image podman already has, a stand-in for python:3.11-slim is
#      made with debootstrap (Debian bookworm, minbase, Python 3.11 as `python`) and imported;
#   2. build: `podman build` of the real Dockerfile (chroot isolation, host network for apt and pip);
#   3. run: the image's filesystem (`podman image mount`) under chroot, in a private mount namespace,
#      as the image's USER with its ENV, WORKDIR and CMD; tmpfs on /data, /tmp and the home folder
#      (the image itself stays read-only, as with Kubernetes' readOnlyRootFilesystem);
#   4. deploy/image_smoke.py checks it over HTTP: /live, /health 200 (cold start timed), a /v1 chat,
#      a Gradio /chat stream, the HEALTHCHECK command, and SIGTERM during a stream: the stream
#      finishes, the process exits 0.
#
# Needs root (chroot, mounts), Linux, apt-get for podman/debootstrap if missing. Slow: the build
# compiles llama-cpp-python (about 7 minutes on 2 cores) and downloads the requirements.
#
#   sudo bash deploy/check-image.sh
#
# Environment (all optional):
#   BASE_IMAGE       base of both stages (default: the debootstrap stand-in, made if missing)
#   IMAGE            tag of the built image (default localhost/quantlab:cpu-check)
#   TORCH_WHEELS     a folder holding torch-<pin>+cpu-*.whl, mounted into the build so torch is not
#                    downloaded (default: pip's configured find-links, if it holds that wheel)
#   CA_BUNDLE        CA bundle for pip behind a TLS-intercepting proxy, given as a build secret
#                    (default: $PIP_CERT, else pip's configured cert, else none)
#   DEBIAN_MIRROR    for debootstrap (default http://deb.debian.org/debian)
#   WORK             scratch folder (default /var/tmp/quantlab-image-check)
#   SKIP_BUILD=1     reuse an already built $IMAGE (step 3 and 4 only)
#   KEEP_IMAGE=1     keep $IMAGE afterwards (default: kept; set KEEP_IMAGE=0 to remove it)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/quantlab:cpu-check}
STANDIN=localhost/quantlab-base:bookworm-python3.11
WORK=${WORK:-/var/tmp/quantlab-image-check}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# --format docker: the OCI format has no HEALTHCHECK (buildah would drop it); the rest is what works
# on these machines (chroot isolation, no cgroup-managed container).
PODMAN_BUILD=(podman build --format docker --isolation=chroot --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
HOST_PYTHON=$(command -v python3)

say() { printf '[check-image] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (chroot and mounts need it)"
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$WORK"

pip_config() { "$HOST_PYTHON" -m pip config get "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------- 1. base
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=$STANDIN
  if ! podman image exists "$BASE_IMAGE"; then
    say "making the base stand-in $BASE_IMAGE with debootstrap (bookworm, python3.11)"
    rm -rf "$WORK/base"
    t0=$(date +%s)
    # What python:3.11-slim has that matters here: Python 3.11 as `python`, venv, CA certificates,
    # useradd/groupadd (passwd), /etc/services (netbase).
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,passwd,netbase \
      bookworm "$WORK/base" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
    rm -rf "$WORK/base/var/lib/apt/lists/"* "$WORK/base/var/cache/apt/"*.bin
    tar -C "$WORK/base" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/base"
    say "base ready in $(( $(date +%s) - t0 )) s: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes"
  fi
fi
podman image exists "$BASE_IMAGE" || die "no image $BASE_IMAGE (podman cannot pull from a registry here)"

# --------------------------------------------------------------------------------------- 2. build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  torch_pin=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements.txt)
  args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" -f Dockerfile)
  TORCH_WHEELS=${TORCH_WHEELS:-$(pip_config global.find-links)}
  if [ -n "$TORCH_WHEELS" ] && compgen -G "$TORCH_WHEELS/torch-${torch_pin}+cpu-*.whl" >/dev/null; then
    say "torch ${torch_pin}+cpu from the local wheel folder (mounted read-only into the build)"
    # PyPI serves torch's dependencies; the local +cpu wheel outranks PyPI's plain 2.x.y (CUDA).
    args+=(-v "$TORCH_WHEELS:/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
  else
    say "no local torch ${torch_pin}+cpu wheel: the build downloads it from the Dockerfile's TORCH_INDEX_URL"
  fi
  CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-$(pip_config global.cert)}}
  if [ -n "$CA_BUNDLE" ] && [ -s "$CA_BUNDLE" ]; then
    say "pip gets the CA bundle as a build secret (not stored in the image)"
    args+=(--secret "id=pip_cert,src=$CA_BUNDLE")
  fi
  say "building $IMAGE from Dockerfile (compiles llama-cpp-python: several minutes)"
  t0=$(date +%s)
  "${PODMAN_BUILD[@]}" "${args[@]}" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "podman build (log: $WORK/build.log)"; }
  build_s=$(( $(date +%s) - t0 ))
  say "built in ${build_s} s (log: $WORK/build.log)"
  echo "$build_s" >"$WORK/build_seconds"
fi
podman image exists "$IMAGE" || die "no image $IMAGE"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image size: $size bytes ($(( size / 1024 / 1024 )) MiB)"

# secrets must not be in any layer
if podman image inspect --format '{{json .Config.Env}}' "$IMAGE" | grep -qi 'PIP_CERT'; then
  die "PIP_CERT ended up in the image's environment"
fi

# ------------------------------------------------------------------------------------ 3. + 4. run
podman image inspect "$IMAGE" >"$WORK/inspect.json"
rootfs=$(podman image mount "$IMAGE")
trap 'podman image unmount "$IMAGE" >/dev/null 2>&1 || true' EXIT
# (the venv's python is a symlink to the image's own interpreter: test the link, not the host path it names)
[ -L "$rootfs/opt/venv/bin/python" ] || [ -f "$rootfs/opt/venv/bin/python" ] || die "the image has no /opt/venv/bin/python"
for secret_path in run/secrets/pip_cert wheels; do
  if [ -n "$(ls -A "$rootfs/$secret_path" 2>/dev/null)" ]; then die "/$secret_path is not empty in the image"; fi
done

"$HOST_PYTHON" deploy/image_smoke.py --rootfs "$rootfs" --inspect "$WORK/inspect.json" \
  --report "$WORK/report.json" --image-size "$size" --build-seconds "$(cat "$WORK/build_seconds" 2>/dev/null || echo -1)" \
  && rc=0 || rc=$?
if [ "${KEEP_IMAGE:-1}" = 0 ]; then podman image unmount "$IMAGE" >/dev/null 2>&1 || true; podman rmi "$IMAGE" >/dev/null; fi
exit $rc
