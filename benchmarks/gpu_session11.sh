#!/usr/bin/env bash
# After gpu_session10.sh (Intel host): its CPU determinism tests failed where workers were forked (torch refuses
# a backward in a child forked after one on a machine with a GPU; start_method now spawns there), and MKL's
# weight gradient of a lone member at 2 threads differed from 1 thread's (now FewMembersLinear). Checks both:
#   1. the CPU determinism, model and worker tests; 2. member_linear's bits at 1, 2, 8, 16 threads;
#   3. end_to_end.py, demo size, on 2 of its cores (taskset), 300 steps.
#   bash benchmarks/gpu_session11.sh      # results under $OUT (default benchmarks/results/gpu/intel-host-2)
OUT_DEFAULT=benchmarks/results/gpu/intel-host-2 DEADLINE_S=${DEADLINE_S:-200}
source benchmarks/gpu_common.sh
PY=${PY:-python3}; BITS_THREADS="1 2 8 16"; E2E_STEPS=300
if [ "${SMOKE:-0}" = 1 ]; then BITS_THREADS="1 2"; E2E_STEPS=20; fi
{
  echo "== 0. $(date -Is) $(lscpu | grep '^Model name' | tr -s ' ')"
  $PY -c 'from emergelab.models import onednn; print(onednn.cpu_vendor(), "|", onednn.describe())'
  echo "== 1. tests ($(left) s left)"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfEs -k "not cuda" tests/test_model.py \
    tests/test_determinism.py 2>&1 | tail -8
  timeout 60 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "fork or spawn or workers" tests/test_train.py 2>&1 | tail -4
  echo "== 2. member_linear's bits across threads ($(left) s left)"
  timeout 40 $PY benchmarks/onednn_bits.py --kernel member_linear --threads $BITS_THREADS \
    --out "$OUT/member_linear_bits.json" 2>&1 | tail -8 | sed -E "s/widths.*threads/threads/"
  echo "== 3. end to end on 2 cores ($(left) s left)"
  if [ "$(left)" -gt 40 ]; then
    (unset OMP_NUM_THREADS; timeout $(( $(left) - 5 )) taskset -c 0,1 $PY benchmarks/end_to_end.py --size demo \
      --steps $E2E_STEPS --rounds 1 --out "$OUT/end_to_end.json" 2>&1 | tail -6)
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
