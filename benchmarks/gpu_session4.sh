#!/usr/bin/env bash
# The fourth device session (after gpu_session3.sh showed the graphed step GPU-bound): SDPA's math backend
# for small heads. CUDA tests, where the step's and the probe's device time goes (gpu_profile_step.py,
# probe_timeline.py),
# step time graphed vs eager, the S = 16 run alone, then grid runs of other sparsities until DEADLINE_S.
#   bash benchmarks/gpu_session4.sh        # results under $OUT (default benchmarks/results/gpu/math-sdpa)
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/math-sdpa DEADLINE_S=${DEADLINE_S:-290}
source benchmarks/gpu_common.sh
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
SMOKE_ARGS=""; SEEDS=64; SYNC_ARGS="--seeds 64 --steps 200"
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARGS="--steps 20 --seeds 2"; SEEDS=2; SYNC_ARGS="--seeds 2 --steps 5"; fi
{
  echo "== 1. CUDA tests $(date -Is)"
  timeout 90 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k cuda tests/test_cuda_graphs.py \
    tests/test_determinism.py tests/test_patching.py tests/test_tasks.py tests/test_mixers.py 2>&1 | tail -30
  echo "== 2. profile ($(left) s left)"
  timeout 80 $PY benchmarks/gpu_profile_step.py --device "$DEVICE" --seeds $SEEDS --out "$OUT" 2>&1 | grep -v "arn"
  echo "== 2b. where one probe's time goes ($(left) s left)"
  timeout 60 $PY benchmarks/probe_timeline.py --device "$DEVICE" --seeds $SEEDS --out "$OUT/probe_timeline.json"
  echo "== 3. step time and host syncs ($(left) s left)"
  timeout 40 $PY benchmarks/gpu_sync_check.py --device "$DEVICE" $SYNC_ARGS --graphs both --out "$OUT/gpu_sync_check.json"
  echo "== 4. the S = 16 run alone ($(left) s left)"
  timeout 110 $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 8 --alone-only \
    $SMOKE_ARGS --results "$OUT/alone"
  GRID_LEFT=$(( $(left) - 5 ))
  echo "== 5. more of the grid ($(left) s left)"
  if [ "$GRID_LEFT" -gt 60 ]; then
    timeout $GRID_LEFT $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 0 --workers 1 \
      --sparsities 4,12,16,6,10,14,3,5,7,9,11,13,15 $SMOKE_ARGS --deadline-s $(( GRID_LEFT - 35 )) --results "$OUT/grid"
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
