#!/usr/bin/env bash
# Install torch *before* emergelab, so that pip never resolves the package's `torch>=2.3,<3` on its own.
#
# Why: on Linux, PyPI's torch wheels are CUDA builds (GBs of CUDA libraries). On a machine without a GPU
# we install the CPU build instead: a local CPU wheel where pip's configuration provides one (its
# find-links), else from PyTorch's CPU wheel index; with a GPU we let pip take the CUDA build. Afterwards
# the package's range is already satisfied and pip installs nothing more.
#
#   EMERGELAB_TORCH        the requirement to install (default: torch==2.13.0 without a GPU,
#                          "torch>=2.3,<3" with one)
#   EMERGELAB_TORCH_INDEX  an index URL to take it from (default without a GPU, when pip alone would take a
#                          CUDA build: PyTorch's CPU wheel index, $CPU_INDEX below)
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
CPU_INDEX="https://download.pytorch.org/whl/cpu"
if [ -z "${EMERGELAB_TORCH_INDEX:-}" ] && [ -z "${EMERGELAB_TORCH:-}" ] && [ "$spec" = "torch==2.13.0" ]; then
  # Which build would pip take? (resolves from metadata; downloads no wheel)
  version=$("$PY" -m pip install --dry-run --quiet --no-deps --report - "$spec" 2>/dev/null |
            "$PY" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' \
            2>/dev/null || true)
  case "$version" in
    *+cpu) ;;  # a local CPU wheel (pip's find-links): take it
    "") echo "could not tell which torch build pip would take; installing $spec as pip resolves it" ;;
    *) echo "pip alone would take torch $version, a CUDA build; no GPU here: taking the CPU build from $CPU_INDEX"
       EMERGELAB_TORCH_INDEX="$CPU_INDEX" ;;
  esac
fi
echo "installing $spec"
if [ -n "${EMERGELAB_TORCH_INDEX:-}" ]; then
  if ! "$PY" -m pip install "$spec" --index-url "$EMERGELAB_TORCH_INDEX"; then
    [ "$EMERGELAB_TORCH_INDEX" = "$CPU_INDEX" ] || exit 1
    echo "WARNING: $CPU_INDEX unreachable; installing $spec from PyPI (a CUDA build: GBs of libraries)" >&2
    "$PY" -m pip install "$spec"
  fi
else
  "$PY" -m pip install "$spec"
fi
