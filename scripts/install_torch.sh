#!/usr/bin/env bash
# Install torch *before* emergelab, so that pip never resolves the package's `torch>=2.3,<3` on its own.
#
# Why: on Linux, PyPI's torch wheels are CUDA builds (GBs of CUDA libraries). On a machine without a GPU
# we install the CPU build instead; with a GPU we let pip take the CUDA build. Afterwards the package's
# range is already satisfied and pip installs nothing more.
#
#   EMERGELAB_TORCH        the requirement to install (default: torch==2.13.0 without a GPU,
#                          "torch>=2.3,<3" with one)
#   EMERGELAB_TORCH_INDEX  an index URL to take it from, e.g. PyTorch's CPU wheel index on a CPU-only
#                          machine that has no local CPU wheel of torch
set -euo pipefail
PY="${1:-python3}"

if "$PY" - <<'PYCODE' 2>/dev/null; then
import sys
import torch
major, minor = (int(p) for p in torch.__version__.split(".")[:2])
sys.exit(0 if (2, 3) <= (major, minor) < (3, 0) else 1)
PYCODE
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') is installed and satisfies >=2.3,<3"
  exit 0
fi

if [ -n "${EMERGELAB_TORCH:-}" ]; then
  spec="$EMERGELAB_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  spec="torch>=2.3,<3"   # a GPU: PyPI's default (CUDA) build
else
  spec="torch==2.13.0"   # no GPU: the CPU build (a local wheel where one is provided)
fi
echo "installing $spec"
if [ -n "${EMERGELAB_TORCH_INDEX:-}" ]; then
  "$PY" -m pip install "$spec" --index-url "$EMERGELAB_TORCH_INDEX"
else
  "$PY" -m pip install "$spec"
fi
