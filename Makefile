# `make demo` and `make test` each set up .venv first (once), then run.
# torch is pinned through constraints.txt to the CPU build this machine's pip provides.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint benchmark reproduce reproduce-quick setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/icl-lightning fit --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# BENCHMARK_ARGS: e.g. --jax-python JAX_VENV/bin/python --jax-ref JAXREF (docs/speed.md)
benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark.py --tables side-by-side deep probes $(BENCHMARK_ARGS)

reproduce: $(STAMP)
	$(BIN)/icl-reproduce

reproduce-quick: $(STAMP)
	$(BIN)/icl-reproduce --quick

clean:
	rm -rf $(VENV) logs reports *.egg-info
