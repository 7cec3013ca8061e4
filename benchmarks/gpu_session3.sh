#!/usr/bin/env bash
# The third device session: the training step replayed from a CUDA graph (execution.cuda_graphs).
#   bash benchmarks/gpu_session3.sh         # results under $OUT (default benchmarks/results/gpu/graphs)
# 1. environment, 2. the CUDA tests (the graph tests among them), 3. step time and host syncs, graphed and
# eager on the same GPU, 4. the S = 16 run alone (64 seeds x 10k steps, graphed), 5. the rest of the
# S = 16 grid as a sweep until DEADLINE_S minus a minute, 6. train_throughput --quick.
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/graphs DEADLINE_S=${DEADLINE_S:-530}
source benchmarks/gpu_common.sh
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
SMOKE_ARGS=""; SYNC_ARGS="--seeds 64 --steps 200"
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARGS="--steps 20 --seeds 2"; SYNC_ARGS="--seeds 2 --steps 5"; fi
{
  echo "== 1. environment $(date -Is)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  echo "== 2. CUDA tests ($(left) s left)"
  timeout 170 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfEs -k cuda tests/test_cuda_graphs.py \
    tests/test_determinism.py tests/test_patching.py tests/test_tasks.py tests/test_mixers.py 2>&1 | tail -40
  echo "== 3. step time and host syncs, graphed vs eager ($(left) s left)"
  timeout 70 $PY benchmarks/gpu_sync_check.py --device "$DEVICE" $SYNC_ARGS --graphs both --out "$OUT/gpu_sync_check.json"
  echo "== 4. the S = 16 run alone ($(left) s left)"
  timeout 120 $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 8 --alone-only \
    $SMOKE_ARGS --results "$OUT/alone"
  GRID_LEFT=$(( $(left) - 75 ))
  echo "== 5. the rest of the grid ($(left) s left; sweep deadline $(( GRID_LEFT - 40 )) s)"
  if [ "$GRID_LEFT" -gt 60 ]; then
    timeout $GRID_LEFT $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 0 --workers 2 \
      $SMOKE_ARGS --deadline-s $(( GRID_LEFT - 40 )) --results "$OUT/grid"
  fi
  echo "== 6. train_throughput --quick ($(left) s left)"
  timeout $(( $(left) > 20 ? $(left) : 20 )) $PY benchmarks/train_throughput.py --device "$DEVICE" --quick \
    --out "$OUT/train_throughput_cuda.json" 2>&1 | tail -14
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
