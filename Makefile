# emergelab: `make demo` trains the demo preset; `make test` runs the test suite. Both install first
# (the dev and ray extras: tests/test_sweep.py runs a sweep on a real local Ray instance; the tensorboard
# and wandb extras: tests/test_trackers.py reads the trackers' files back, wandb in offline mode).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emergelab-installed

.PHONY: install demo test test-fast bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml scripts/install_torch.sh | $(PY)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -e '.[dev,ray,tensorboard,wandb]'
	# Triton, apart from the environment (installed there, transformers would route its reference kernels to
	# fla's Triton code, which needs a GPU): tests/test_gpu_kernels.py runs the CUDA layer norm's kernels under
	# Triton's interpreter from it; without a wheel for this platform that test skips
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton-interpreter triton==3.6.0 \
		|| echo "no Triton wheel here: the Triton interpreter test will skip"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emergelab run linear-map --preset demo --out runs/demo

# Tests run torch at one thread (tests/conftest.py); OMP_NUM_THREADS keeps workers from oversubscribing.
# The HTML report's browser tests need chromium: ensure_chromium.sh installs it when it can (else they skip).
test: $(STAMP)
	bash scripts/ensure_chromium.sh
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-fast: $(STAMP)
	bash scripts/ensure_chromium.sh
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
