#!/usr/bin/env bash
# Set up fastgan on a fresh machine: torch, then fastgan with its CUDA
# extension when a CUDA toolkit is found (no GPU needed to build).
#   FASTGAN_BUILD_CUDA=auto|0|1   (default auto)   TORCH_CUDA_ARCH_LIST (default "8.0;9.0")
#   TORCH_SPEC   the torch requirement (default torch==2.14.1 torchvision==0.29.1)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export PATH="$CUDA_HOME/bin:$PATH"
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
# --no-build-isolation: build fastgan._C against the torch installed above.
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install --no-build-isolation -e ".[dev]"
"$PY" -m fastgan info
