#!/usr/bin/env bash
# A device session after the oneDNN change (stop 29: models/onednn.py, layers.OneDnnMemberLinear, layers.Linear
# in lm/neox.py). The GPU path should be unchanged (oneDNN is CPU only); this checks it, and asks the device
# host's CPU (often an Intel Xeon, where MKL runs AVX-512) whether oneDNN's threshold holds there:
#   1. the CUDA tests (now with layers.Linear on CUDA);
#   2. the host CPU: its model, onednn.describe(), the oneDNN tests, onednn_products.py (MKL vs oneDNN and
#      the map grid behind MIN_MACS), onednn_bits.py at 1, 2, 8 and 16 threads;
#   3. train_throughput.py --device cuda --quick; 4. the host-sync check (64 seeds, graphed and eager);
#   5. the S = 16 linear map alone, 64 seeds x 10 000 steps end to end (49.5 s on an H200 on 2026-11-27).
#   bash benchmarks/gpu_session9.sh        # results under $OUT (default benchmarks/results/gpu/onednn-host)
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/onednn-host DEADLINE_S=${DEADLINE_S:-420}
source benchmarks/gpu_common.sh
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
SMOKE_ARGS=""; SYNC_ARGS="--seeds 64 --steps 200"; BITS_THREADS="1 2 8 16"
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARGS="--steps 20 --seeds 2"; SYNC_ARGS="--seeds 2 --steps 5"; BITS_THREADS="1 2"; fi
{
  echo "== 0. $(date -Is) $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>&1 | tail -1)"
  lscpu | grep -E "^(Model name|Vendor ID|CPU\(s\)|Thread|Core|Socket|L2|L3)" ; grep -o -w -E "avx512f|avx512_bf16|amx_tile|avx2" /proc/cpuinfo | sort | uniq -c
  $PY -c 'import torch; print(torch.__config__.show())' | grep -i -E "mkl|onednn|cpu capability" | head -8
  $PY -c 'from emergelab.models import onednn; print(onednn.describe())'
  echo "== 1. CUDA tests ($(left) s left)"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "cuda or triton" tests/test_gpu_kernels.py \
    tests/test_cuda_graphs.py tests/test_determinism.py tests/test_patching.py tests/test_tasks.py tests/test_mixers.py \
    tests/test_model.py 2>&1 | tail -30
  echo "== 2. the host CPU: oneDNN tests, products, bits ($(left) s left)"
  timeout 60 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "onednn or linear" tests/test_model.py 2>&1 | tail -5
  timeout 60 $PY benchmarks/onednn_products.py --out "$OUT/onednn_products.json"
  timeout 60 $PY benchmarks/onednn_bits.py --threads $BITS_THREADS --out "$OUT/onednn_bits.json" 2>&1 | tail -4
  echo "== 3. train_throughput --quick ($(left) s left)"
  timeout 130 $PY benchmarks/train_throughput.py --device "$DEVICE" --quick --out "$OUT/train_throughput_cuda.json" 2>&1 | tail -14
  echo "== 4. step time and host syncs, graphed and eager ($(left) s left)"
  timeout 60 $PY benchmarks/gpu_sync_check.py --device "$DEVICE" $SYNC_ARGS --graphs both --out "$OUT/gpu_sync_check.json"
  echo "== 5. the S = 16 run alone ($(left) s left)"
  if [ "$(left)" -gt 75 ]; then
    timeout $(( $(left) - 5 )) $PY benchmarks/gpu_grid.py --device "$DEVICE" --out /tmp/paper-S16 --alone 8 --alone-only \
      $SMOKE_ARGS --results "$OUT/alone"
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
