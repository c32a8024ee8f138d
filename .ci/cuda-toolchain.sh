#!/usr/bin/env bash
# Installs NVIDIA's CUDA 13.0 compiler (nvcc, ptxas, cicc, the CUDA headers) from PyPI wheels into
# a venv, so that `cargo build --features cuda` can compile `kernels/*.cu` on a machine without a
# CUDA toolkit or GPU. Idempotent: a second run with the toolchain in place does nothing.
#
# Usage: .ci/cuda-toolchain.sh [DIR]   (default DIR: $WANRT_CUDA_TOOLCHAIN, else .cuda-toolchain
# at the repository root, which .gitignore lists). Prints the path of nvcc on its last line.
#
# Why 13.0: PTX and cubins made by a toolkit run on drivers of at least that toolkit's version, and
# the GPU machines run CUDA 13 drivers; the oldest 13.x toolchain suits every one of them. build.rs
# finds nvcc in DIR on its own (or set WANRT_NVCC to the path this prints).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_TOOLKIT_VERSION=13.0.2
dir=${1:-${WANRT_CUDA_TOOLCHAIN:-$PWD/.cuda-toolchain}}
nvcc="$dir/venv/nvidia/cu13/bin/nvcc"
stamp="$dir/venv/.installed-cuda-toolkit-$CUDA_TOOLKIT_VERSION"

if [[ ! -f "$stamp" ]]; then
    mkdir -p "$dir"
    # The wheels are installed with --target rather than into a full venv: nvcc needs only the
    # files, and the tree stays relocatable. Downloads are cached by pip (~/.cache/pip).
    rm -rf "$dir/venv.tmp"
    python3 -m pip install --quiet --disable-pip-version-check --no-compile \
        --target "$dir/venv.tmp" "cuda-toolkit[nvcc,crt,cudart,cccl,nvvm]==$CUDA_TOOLKIT_VERSION"
    rm -rf "$dir/venv"
    mv "$dir/venv.tmp" "$dir/venv"
    touch "$stamp"
fi
if ! "$nvcc" --version >/dev/null 2>&1; then
    echo "cuda-toolchain: $nvcc does not run; delete $dir and run this script again" >&2
    exit 1
fi
echo "$nvcc"
