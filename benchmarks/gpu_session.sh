#!/usr/bin/env bash
# Everything emergelab checks on a lent GPU, in one prepared script (one device session):
#   bash benchmarks/gpu_session.sh            # results under $OUT (default benchmarks/results/gpu)
# 1. environment, 2. the CUDA tests, 3. host-sync check of the training step, 4. train_throughput --device
# cuda, 5. the paper-scale S = 16 grid (one run alone, timed; the rest as a sweep until the deadline).
# DEADLINE_S (default 540) bounds the whole script; each step gets what is left.
OUT_DEFAULT=benchmarks/results/gpu DEADLINE_S=${DEADLINE_S:-540}
source benchmarks/gpu_common.sh
{
  echo "== 1. environment $(date -Is)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
  echo "== 2. CUDA tests ($(left) s left)"
  timeout 170 python3 -m pytest -q -p no:cacheprovider -o addopts="" -k cuda \
    tests/test_determinism.py tests/test_patching.py tests/test_tasks.py tests/test_mixers.py 2>&1 | tail -25
  echo "== 3. host-sync check ($(left) s left)"
  timeout 60 python3 benchmarks/gpu_sync_check.py --device cuda --seeds 64 --steps 200 --out "$OUT/gpu_sync_check.json"
  echo "== 4. train_throughput --device cuda ($(left) s left)"
  timeout 150 python3 benchmarks/train_throughput.py --device cuda --out "$OUT/train_throughput_cuda.json"
  echo "== 5. paper-scale grid ($(left) s left)"
  GRID_LEFT=$(( $(left) - 20 ))
  timeout $GRID_LEFT python3 benchmarks/gpu_grid.py --device cuda --out /tmp/paper-S16 --workers 8 \
    --deadline-s $(( GRID_LEFT - 45 )) --results "$OUT"
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
