# `make test` and `make demo` are all the set-up there is: each creates .venv and installs
# the project (editable, with the dev extra) the first time, and again when pyproject.toml
# changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite, slow tests included, then every benchmark once at a tiny size so the
# suite cannot rot (no time is asserted). CI runs this through .ci/run.
test: lint
	$(BIN)/python -m pytest -m "" -q
	$(BIN)/python -m pytest benchmarks --benchmark-disable --bench-size tiny -q -p no:cacheprovider

# The default quick run: everything except the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/atfnn-fast demo

# Record a benchmark run: benchmarks/results/<device>-<date>.{json,md,png} + README section.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.report --readme

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
