# memray: the two commands a newcomer runs (both set up what they need first).
#   make demo   — create .venv, install memray (CPU), run the audit job on the bundled sample data
#   make test   — create .venv, install memray + test tools, lint, run the test suite
# EXTRAS picks the pip extras: cpu|gpu (FAISS), cluster (ray[default]: `ray start --head`, dashboard, `ray job submit`),
# test (pytest, moto, ...; includes cluster). E.g. `make setup EXTRAS=gpu,cluster` on a GPU machine of a cluster.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
CONFIG ?= jobs/configs/default.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(BIN)/python jobs/audit.py --config $(CONFIG)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_ct.py
	$(BIN)/python benchmarks/bench_evidence.py
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
