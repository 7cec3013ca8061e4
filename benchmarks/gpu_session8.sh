#!/usr/bin/env bash
# A device session after gpu_session7.sh: examples/repeated-rules-long.yaml at 64 seeds an arm (`--scale gpu`:
# the cellular automata's pool of 4 behind half the sequences, then fresh rules alone, 10 000 steps each),
# to test the 4 CPU seeds' finding (docs/results.md, "repeated-rules") until DEADLINE_S. Each finished run
# comes back as one archive without its checkpoints and attention snapshots ($OUT/<run>.tgz).
#   bash benchmarks/gpu_session8.sh        # results under $OUT (default benchmarks/results/gpu/repeated-rules)
# FILE=examples/repeated-rules-S4.yaml: the same for the S = 4 sweep (3 arms, 3000 steps).
# DEVICE=cpu SMOKE=1 runs the same steps at toy size (to check the script before spending device time).
OUT_DEFAULT=benchmarks/results/gpu/repeated-rules DEADLINE_S=${DEADLINE_S:-400}
source benchmarks/gpu_common.sh
PY=${PY:-python3}; SCALE=gpu; SWEEP=${SWEEP:-/tmp/repeated-rules-long}; FILE=${FILE:-examples/repeated-rules-long.yaml}
if [ "${SMOKE:-0}" = 1 ]; then SCALE=smoke; fi
{
  echo "== 0. $(date -Is) $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>&1 | tail -1)"
  echo "== 1. $FILE --scale $SCALE ($(left) s left)"
  timeout $(( $(left) - 30 )) $PY -m emergelab.cli sweep "$FILE" --scale $SCALE \
    --out "$SWEEP" --workers 1 --quiet
  echo "sweep exit $? after $(( $(date +%s) - START )) s"
  echo "== 2. collect ($(left) s left)"
  for run in "$SWEEP"/runs/*/; do
    [ -f "$run/summary.json" ] || { echo "unfinished: $run"; continue; }
    tar czf "$OUT/$(basename "$run").tgz" -C "$SWEEP/runs" --exclude=checkpoints --exclude=attention "$(basename "$run")"
  done
  $PY -m emergelab.cli analyze "$SWEEP" --by task.rules,task.pool_fraction --out "$SWEEP/analysis" 2>&1 | tail -12
  ls -la "$OUT"
  echo "== done $(date -Is) after $(( $(date +%s) - START )) s"
} 2>&1 | tee "$OUT/log.txt"
