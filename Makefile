# `make test` and `make demo` are all the set-up there is: each creates .venv and installs
# the project (editable, with the dev extra, at the versions pinned in constraints.txt) the
# first time, and again when pyproject.toml or constraints.txt changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast test-compat lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
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

# The default suite (`pytest -q`) against the lowest torch pyproject.toml declares and against
# the newest the registry serves, each installed without constraints.txt in its own
# throwaway venv under /tmp (deleted afterwards). In the versions of COMPAT_GATE (the newest:
# its Triton, e.g. 3.8 beside CI's pinned 3.6) the resource gate runs too: the slow tests of
# tests/kernels/test_resources.py, every launch compiled for sm_80/86/89/90 by that Triton's
# ptxas (docs/design.md#kernel-resources). Downloads torch twice; not part of `make
# test`. Prints one result line per run and fails if any run fails.
COMPAT_TORCH ?= lowest newest
COMPAT_GATE ?= newest
GATE_TESTS := tests/kernels/test_resources.py
test-compat:
	@status=0; for which in $(COMPAT_TORCH); do \
	  dir=$$(mktemp -d /tmp/atfnn-compat-$$which.XXXXXX); log=$$dir.log; \
	  if [ $$which = lowest ]; then \
	    spec=$$(sed -n 's/^ *"torch>=\([0-9.]*\)",*$$/torch==\1/p' pyproject.toml); \
	  else spec="torch"; fi; \
	  echo "== test-compat $$which ($$spec) in $$dir"; \
	  if $(PYTHON) -m venv $$dir && \
	     $$dir/bin/python -m pip install --quiet --upgrade pip && \
	     $$dir/bin/python -m pip install --quiet --upgrade "$$spec" ".[dev]"; then \
	    version=$$($$dir/bin/python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"); \
	    $$dir/bin/python -m pytest -q -p no:cacheprovider > $$log 2>&1; rc=$$?; \
	  else version="install failed"; echo "pip install failed" > $$log; rc=2; fi; \
	  tail -n 15 $$log; \
	  echo "== test-compat $$which: $$version: $$(tail -n 1 $$log) (exit $$rc; log $$log)"; \
	  [ $$rc -eq 0 ] || status=1; \
	  case " $(COMPAT_GATE) " in *" $$which "*) if [ $$rc -ne 2 ]; then \
	    $$dir/bin/python -m pytest -q -p no:cacheprovider -m slow $(GATE_TESTS) > $$log.gate 2>&1; \
	    grc=$$?; tail -n 15 $$log.gate; \
	    echo "== test-compat $$which resource gate: $$version: $$(tail -n 1 $$log.gate) (exit $$grc; log $$log.gate)"; \
	    [ $$grc -eq 0 ] || status=1; fi;; esac; \
	  rm -rf $$dir; \
	done; exit $$status

demo: $(STAMP)
	$(BIN)/atfnn-fast demo

# Record a benchmark run: benchmarks/results/<device>-<date>.{json,md,png} + the tables of
# docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.report --readme

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
