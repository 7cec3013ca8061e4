#!/usr/bin/env bash
# The sixth device session, after gpu_session5.sh (the Triton layer norm and the bmm attention: graphed step
# 5.35 -> 3.96 ms, the S = 16 run alone 63.1 -> 49.5 s on an H200). The step's kernel choices again with the
# host's share of each step (the eager step with both new kernels read 6.12 ms against 5.59: host-bound?),
# train_throughput.py --quick with the new kernels, then grid runs of the sparsities not yet run until DEADLINE_S.
#   bash benchmarks/gpu_session6.sh        # results under $OUT (default benchmarks/results/gpu/triton-ln-2)
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/triton-ln-2 DEADLINE_S=${DEADLINE_S:-380}
source benchmarks/gpu_common.sh
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
SMOKE_ARGS=""; AB_ARGS="--seeds 64 --steps 100 --rounds 5"; TP_ARGS="--quick"
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARGS="--steps 20 --seeds 2"; AB_ARGS="--seeds 2 --steps 3 --rounds 1"; TP_ARGS="--quick"; fi
{
  echo "== 0. $(date -Is) $($PY -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>&1 | tail -1)"
  echo "== 1. the step under each choice of kernels, with host time"
  timeout 100 $PY benchmarks/gpu_step_ab.py --device "$DEVICE" $AB_ARGS --out "$OUT/gpu_step_ab.json" 2>&1 | grep -v "arn\|USDT"
  echo "== 2. train_throughput --quick ($(left) s left)"
  timeout 130 $PY benchmarks/train_throughput.py --device "$DEVICE" $TP_ARGS --out "$OUT/train_throughput_cuda.json" 2>&1 | tail -14
  GRID_LEFT=$(( $(left) - 5 ))
  echo "== 3. grid runs not yet run ($(left) s left)"
  if [ "$GRID_LEFT" -gt 70 ]; then
    timeout $GRID_LEFT $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 0 --workers 1 \
      --sparsities 3,5,6,7,9,10,11,12,13,14,15,16 $SMOKE_ARGS --deadline-s $(( GRID_LEFT - 35 )) --results "$OUT/grid"
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
