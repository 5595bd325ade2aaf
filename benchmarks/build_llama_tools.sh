#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-server, llama-perplexity, llama-batched-bench, llama-bench, llama-imatrix) from the
# llama.cpp that the pinned llama-cpp-python sdist vendors: the same source as the app's engine, so the
# benchmark's anchor measures the same kernels.
#
#   benchmarks/build_llama_tools.sh [--if-needed] [OUT_DIR]   # default: $QUANTLAB_TOOLS_DIR or ~/.cache/quantlab-tools
#
# Sources go to OUT_DIR/src, binaries to OUT_DIR/bin; nothing is written into the repository. About 10
# minutes on 2 cores. --if-needed (what .ci/run uses): do nothing when OUT_DIR/bin already holds the
# tools built by this script from the pinned version (its stamp, OUT_DIR/bin/.built-from, says which).
# Environment: LLAMA_CPP_PYTHON_VERSION (default: the pin in requirements.txt), PYTHON (pip's
# interpreter; default the repo's .venv), JOBS (default: all CPUs), NICE (default 19: the machines are shared).
#
# CPUs with Intel AMX: llama.cpp's AMX matmul kernels crash in this version (the app turns them off at
# run time, backends/llamacpp/open.py). GGML_NATIVE's -march=native would compile them in, and the
# GGML_AMX_* options only add AMX, so the AMX ISA is switched off at compile time with -mno-amx-*
# (GCC lets an explicit -mno-<isa> win over -march=native); the script then checks that no AMX backend
# symbol made it into the binaries.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IF_NEEDED=0
if [[ "${1:-}" == "--if-needed" ]]; then IF_NEEDED=1; shift; fi
OUT="${1:-${QUANTLAB_TOOLS_DIR:-$HOME/.cache/quantlab-tools}}"
PIN="$(sed -n 's/^llama-cpp-python==\([0-9][0-9.]*\).*/\1/p' "$REPO/requirements.txt")"
PIN="${PIN%%$'\n'*}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-${PIN:?no llama-cpp-python==VERSION pin in requirements.txt}}"
JOBS="${JOBS:-$(nproc)}"
NICE="${NICE:-19}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
case "$(realpath -m "$OUT")/" in
  "$REPO"/*) echo "error: OUT_DIR must be outside the repository ($REPO)" >&2; exit 2 ;;
esac
TARGETS=(llama-server llama-perplexity llama-batched-bench llama-bench llama-imatrix)
AMX=0
if grep -qw -e amx_tile -e amx_int8 -e amx_bf16 /proc/cpuinfo 2>/dev/null; then AMX=1; fi
STAMP="$OUT/bin/.built-from"
BUILT_FROM="llama-cpp-python==$VERSION amx-kernels-off=$AMX"
BUILD="$OUT/build-$VERSION"

up_to_date() {  # every tool in bin/, built from this version (by the stamp, or identical to this version's build)
  local t
  for t in "${TARGETS[@]}"; do [[ -x "$OUT/bin/$t" ]] || return 1; done
  [[ "$(cat "$STAMP" 2>/dev/null)" == "$BUILT_FROM" ]] && return 0
  for t in "${TARGETS[@]}"; do cmp -s "$BUILD/bin/$t" "$OUT/bin/$t" || return 1; done
  echo "$BUILT_FROM" >"$STAMP"  # installed from this version's build before the stamp existed
}
if (( IF_NEEDED )) && up_to_date; then
  echo "== llama.cpp tools in $OUT/bin are up to date ($BUILT_FROM): not rebuilding"
  exit 0
fi

SRC="$OUT/src"
TREE="$SRC/llama_cpp_python-$VERSION"
mkdir -p "$SRC" "$OUT/bin"
if [[ ! -d "$TREE/vendor/llama.cpp" ]]; then
  echo "== downloading the llama-cpp-python $VERSION sdist into $SRC"
  "$PYTHON" -m pip download --no-deps --no-binary :all: -d "$SRC" "llama-cpp-python==$VERSION"
  tar -xzf "$SRC/llama_cpp_python-$VERSION.tar.gz" -C "$SRC"
fi
LLAMA="$TREE/vendor/llama.cpp"

CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF   # no network at configure time; the web UI is not needed
  -DGGML_NATIVE=ON
)
if (( AMX )); then
  echo "== this CPU has AMX: building without llama.cpp's AMX kernels"
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_ARGS+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
               "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
echo "== configuring in $BUILD"
cmake -S "$LLAMA" -B "$BUILD" "${GEN[@]}" "${CMAKE_ARGS[@]}" >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
echo "== building ${TARGETS[*]} with $JOBS jobs (nice $NICE); log: $OUT/build.log"
start=$(date +%s)
nice -n "$NICE" cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "== built in $(( $(date +%s) - start )) s"

for t in "${TARGETS[@]}"; do
  install -m 755 "$BUILD/bin/$t" "$OUT/bin/$t"
done
if (( AMX )); then
  for t in "${TARGETS[@]}"; do
    syms="$(nm "$OUT/bin/$t" 2>/dev/null || true)"
    if ! grep -q ggml_backend_cpu <<<"$syms"; then
      echo "error: cannot read the symbols of $t to check for AMX (nm missing, or stripped)" >&2; exit 1
    fi
    if grep -q ggml_backend_amx <<<"$syms"; then
      echo "error: $t still contains llama.cpp's AMX backend" >&2; exit 1
    fi
  done
  echo "== checked: no AMX backend in the binaries"
fi
echo "$BUILT_FROM" >"$STAMP"
"$OUT/bin/llama-server" --version 2>&1 | grep -m1 '^version' || true
for t in "${TARGETS[@]}"; do echo "$OUT/bin/$t"; done
