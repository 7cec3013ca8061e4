#!/usr/bin/env bash
# The fifth device session: the Triton layer norm and the bmm attention of small heads (models/triton_layer_norm.py,
# transformer.bmm_attention). CUDA tests; the step under each choice of kernels (gpu_step_ab.py); where one
# probe's time goes (probe_timeline.py, first run on a GPU); the S = 16 run alone end to end with where its time
# goes, with the new kernels and then with the old (a same-device baseline); then train_throughput.py --quick.
#   bash benchmarks/gpu_session5.sh        # results under $OUT (default benchmarks/results/gpu/triton-ln)
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/triton-ln DEADLINE_S=${DEADLINE_S:-330}
source benchmarks/gpu_common.sh
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
SMOKE_ARGS=""; SEEDS=64; AB_ARGS="--seeds 64 --steps 100 --rounds 3"
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARGS="--steps 20 --seeds 2"; SEEDS=2; AB_ARGS="--seeds 2 --steps 3 --rounds 1"; fi
{
  echo "== 0. $(date -Is) $($PY -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>&1 | tail -1)"
  echo "== 1. CUDA tests"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "cuda or triton" tests/test_gpu_kernels.py \
    tests/test_cuda_graphs.py tests/test_determinism.py tests/test_patching.py tests/test_tasks.py tests/test_mixers.py 2>&1 | tail -30
  echo "== 2. the step under each choice of kernels ($(left) s left)"
  timeout 100 $PY benchmarks/gpu_step_ab.py --device "$DEVICE" $AB_ARGS --out "$OUT/gpu_step_ab.json" 2>&1 | grep -v "arn\|USDT"
  echo "== 3. where one probe's time goes ($(left) s left)"
  timeout 60 $PY benchmarks/probe_timeline.py --device "$DEVICE" --seeds $SEEDS --out "$OUT/probe_timeline.json"
  echo "== 4. the S = 16 run alone, new kernels ($(left) s left)"
  timeout 100 $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 8 --alone-only \
    $SMOKE_ARGS --results "$OUT/alone"
  echo "== 5. the S = 16 run alone, torch kernels ($(left) s left)"
  if [ "$(left)" -gt 80 ]; then
    timeout $(( $(left) - 5 )) $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16-torch --alone 8 \
      --alone-only --kernels torch $SMOKE_ARGS --results "$OUT/alone-torch"
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
