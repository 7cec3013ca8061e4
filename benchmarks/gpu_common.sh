# Sourced by the gpu_session*.sh scripts: OUT (from $OUT or the script's default $OUT_DEFAULT), START and
# left() (seconds left of DEADLINE_S), unbuffered 1-thread Python, and PYTHONPATH with src/ and the wheels
# the device image lacks (duckdb), carried in .whl/ (untracked; fetch it with `pip download duckdb --no-deps
# --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl`) and installed into /tmp/site.
set -u
OUT=${OUT:-$OUT_DEFAULT}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD/src:/tmp/site
else
  export PYTHONPATH=$PWD/src
fi
