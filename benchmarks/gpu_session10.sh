#!/usr/bin/env bash
# The device host's CPU after gpu_session9.sh found that on its Intel Xeon (AVX-512, AMX) MKL is as fast as
# oneDNN and a map's forward + backward 1.1-3x faster than OneDnnMemberLinear, and that oneDNN's weight
# gradient there changes its bits at 8 and 16 threads. oneDNN is now off by default on Intel CPUs; this checks
# the default on the Intel host, as a user would meet it:
#   1. onednn.describe(); the oneDNN, model and CLI tests and the CPU determinism tests (MKL's AVX-512 kernels);
#   2. onednn_bits.py --kernel member_linear at 1, 2, 8 and 16 threads (the default dispatch: MKL);
#   3. the step, 1 thread, EMERGELAB_ONEDNN=0 against =1 (benchmarks/step_cpu.py, alternating);
#   4. end_to_end.py on 2 of its cores (taskset), 1000 steps, 1 round: emergelab against the plain loop.
#   bash benchmarks/gpu_session10.sh      # results under $OUT (default benchmarks/results/gpu/intel-host)
# SMOKE=1: fewer steps (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/intel-host DEADLINE_S=${DEADLINE_S:-400}
source benchmarks/gpu_common.sh
PY=${PY:-python3}; BITS_THREADS="1 2 8 16"; E2E_STEPS=1000
if [ "${SMOKE:-0}" = 1 ]; then BITS_THREADS="1 2"; E2E_STEPS=20; fi
{
  echo "== 0. $(date -Is) $(lscpu | grep '^Model name' | tr -s ' ')"
  $PY -c 'from emergelab.models import onednn; print(onednn.cpu_vendor(), "|", onednn.describe())'
  echo "== 1. tests ($(left) s left)"
  timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "not cuda" tests/test_model.py \
    tests/test_determinism.py 2>&1 | tail -8
  timeout 60 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE -k "list" tests/test_cli.py 2>&1 | tail -4
  echo "== 2. member_linear's bits across threads ($(left) s left)"
  timeout 60 $PY benchmarks/onednn_bits.py --kernel member_linear --threads $BITS_THREADS \
    --out "$OUT/member_linear_bits.json" 2>&1 | tail -8
  echo "== 3. the step, 1 thread: oneDNN off / on ($(left) s left)"
  for round in 1 2; do
    for flag in 0 1; do
      echo "EMERGELAB_ONEDNN=$flag $(EMERGELAB_ONEDNN=$flag timeout 60 $PY benchmarks/step_cpu.py lm16:2 demo:2 | tr '\n' ' ')"
    done
  done
  echo "== 4. end to end on 2 cores ($(left) s left)"
  if [ "$(left)" -gt 60 ]; then
    (unset OMP_NUM_THREADS; timeout $(( $(left) - 10 )) taskset -c 0,1 $PY benchmarks/end_to_end.py --steps $E2E_STEPS \
      --rounds 1 --out "$OUT/end_to_end.json" 2>&1 | tail -12)
  fi
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
