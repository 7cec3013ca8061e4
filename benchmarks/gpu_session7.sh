#!/usr/bin/env bash
# The next device session, prepared after gpu_session6.sh: the CUDA tests, the host-sync check re-run with
# fix 4's kernels (the Triton layer norm, the bmm attention), then the paper-scale grid's last sparsities
# (s = 11..16; s = 1..10 are in docs/results.md) until DEADLINE_S. About 8 minutes on an H200.
#   bash benchmarks/gpu_session7.sh        # results under $OUT (default benchmarks/results/gpu/grid-dense)
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/grid-dense DEADLINE_S=${DEADLINE_S:-420}
source benchmarks/gpu_common.sh
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
SMOKE_ARGS=""; SYNC_ARGS="--seeds 64 --steps 200"
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARGS="--steps 20 --seeds 2"; SYNC_ARGS="--seeds 2 --steps 5"; fi
{
  echo "== 0. $(date -Is) $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>&1 | tail -1)"
  echo "== 1. CUDA tests"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "cuda or triton" tests/test_gpu_kernels.py \
    tests/test_cuda_graphs.py tests/test_determinism.py tests/test_patching.py tests/test_tasks.py tests/test_mixers.py 2>&1 | tail -30
  echo "== 2. step time and host syncs, graphed and eager ($(left) s left)"
  timeout 60 $PY benchmarks/gpu_sync_check.py --device "$DEVICE" $SYNC_ARGS --graphs both --out "$OUT/gpu_sync_check.json"
  GRID_LEFT=$(( $(left) - 5 ))
  echo "== 3. the grid's dense end ($(left) s left)"
  if [ "$GRID_LEFT" -gt 70 ]; then
    timeout $GRID_LEFT $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 0 --workers 1 \
      --sparsities 11,12,13,14,15,16 $SMOKE_ARGS --deadline-s $(( GRID_LEFT - 35 )) --results "$OUT/grid"
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
