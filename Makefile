# emergelab: `make demo` trains the demo preset; `make test` runs the test suite. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emergelab-installed
# jemalloc avoids page faults from glibc freeing large activations every step (15-25% faster here).
JEMALLOC := $(firstword $(wildcard /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2))
RUN_ENV := $(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC))

.PHONY: install demo test test-fast bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml scripts/install_torch.sh | $(PY)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(RUN_ENV) $(VENV)/bin/emergelab run linear-map --preset demo --out runs/demo

# Tests run torch at one thread (tests/conftest.py); OMP_NUM_THREADS keeps workers from oversubscribing.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(RUN_ENV) $(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
