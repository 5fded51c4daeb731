# `make test` and `make demo` are all the set-up there is: each creates .venv and installs
# the project (editable, with the dev extra, at the versions pinned in constraints.txt) the
# first time, and again when pyproject.toml or constraints.txt changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast test-avx2 test-isa test-compat lint demo bench clean

# oneDNN and ATen capped to AVX2: on any x86 machine, the code paths of a CPU without
# AVX-512, VNNI or native bf16 (most laptops, desktops and many cloud VMs). ONNX Runtime
# ignores the caps; the int8 graph's format is checked by the arithmetic of its kernels
# (tests/export/test_int8_format.py).
# On x86 the native CPU core's AVX2 path is forced too (kernels/native.py).
AVX2_ENV := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
	$(if $(filter x86_64 amd64 AMD64,$(shell uname -m)),ATFNN_NATIVE_ISA=avx2,)

$(STAMP): pyproject.toml constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP) $(NATIVE)

# the native CPU core (setup.py): rebuilt in place when its sources change
NATIVE := $(VENV)/.native-built
NATIVE_SOURCES := $(wildcard kernels/csrc/*.cpp kernels/csrc/*.h kernels/*/native.cpp)
$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(NATIVE)

lint: $(STAMP) $(NATIVE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest-xdist workers of `make test` (2: the CI machine's cores; most tests are single-
# threaded Python, the Triton interpreter's above all). loadscope keeps a module's tests,
# and so its module-scoped fixtures (a local Ray, a trained checkpoint), on one worker.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadscope

# The whole suite, slow tests included, then every benchmark once at a tiny size so the
# suite cannot rot (no time is asserted). CI runs this through .ci/run.
test: lint
	$(BIN)/python -m pytest -m "" -q $(XDIST)
	$(BIN)/python -m pytest benchmarks --benchmark-disable --bench-size tiny -q -p no:cacheprovider
	$(MAKE) --no-print-directory test-isa

# The tests marked isa (autocast, the int8 format, the CPU paths' parity) again, capped to
# AVX2: a small subset, part of `make test` and so of CI.
test-isa: $(STAMP) $(NATIVE)
	@echo "== the isa tests with oneDNN and ATen capped to AVX2 ($(AVX2_ENV))"
	$(AVX2_ENV) $(BIN)/python -m pytest -m isa -q -p no:cacheprovider $(XDIST)

# The default quick run (as test-fast), capped to AVX2.
test-avx2: $(STAMP) $(NATIVE)
	$(AVX2_ENV) $(BIN)/python -m pytest -q

# The default quick run: everything except the tests marked slow.
test-fast: $(STAMP) $(NATIVE)
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

demo: $(STAMP) $(NATIVE)
	$(BIN)/atfnn-fast demo

# Record a benchmark run: benchmarks/results/<device>-<date>.{json,md,png} + the tables of
# docs/benchmarks.md.
bench: $(STAMP) $(NATIVE)
	$(BIN)/python -m benchmarks.report --readme

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
