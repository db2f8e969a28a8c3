# Quick start: `make demo` (set up, build, run the reproducibility demo) and `make test` (the checks of
# `make lint`, then the suite). Each sets up .venv on first use: torch, the test tools, then detlstm
# built against that torch. `make lint` alone: ruff over the Python, and no function in csrc/ or
# detlstm/ over MAX_NLOC lines of code (lizard's NLOC); it needs only the venv, not the build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.detlstm-built
LINT_TOOLS := $(VENV)/.lint-tools-installed
RUFF_SPEC ?= ruff==0.17.6
LIZARD_SPEC ?= lizard==1.24.3
# Extras the tests use: ONNX export checked with onnxruntime (users need these only to export), and
# expecttest, which torch's own test library (the re-aimed upstream LSTM tests) imports.
ONNX_SPECS ?= onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0
TEST_SPECS ?= expecttest==0.3.0
TEST_EXTRAS := $(VENV)/.test-extras-v2-installed
MAX_NLOC ?= 80
# Files named on lizard's command line are always read (an unknown extension as C/C++), but its walk
# of a folder keeps only the extensions it knows, and .cu/.cuh are not among them: so name every file.
LENGTH_CHECKED = $(shell find csrc detlstm -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' \
                   -o -name '*.cuh' -o -name '*.py' \) | LC_ALL=C sort)
SOURCES := setup.py pyproject.toml detlstm/_build_config.py $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test lint bench build clean

demo: $(BUILT)
	$(PY) -m detlstm

test: lint $(BUILT) $(TEST_EXTRAS)
	$(PY) -m pytest -q tests

# Both checks always run (each one's findings are shown); the target fails if either does. Only the
# NLOC threshold is set: lizard's other limits (complexity, length with comments, parameters) are
# raised out of the way.
lint: $(LINT_TOOLS)
	@status=0; \
	echo "ruff check: pyflakes (F) and syntax errors (E9) over the repository's Python"; \
	$(VENV)/bin/ruff check --output-format concise || status=1; \
	echo "lizard: functions in csrc/ and detlstm/ over $(MAX_NLOC) lines of code (NLOC), if any:"; \
	$(VENV)/bin/lizard --warnings_only -T nloc=$(MAX_NLOC) -C 1000000 -L 1000000 -a 1000 \
		$(LENGTH_CHECKED) || status=1; \
	if [ $$status = 0 ]; then echo "lint: clean"; else echo "lint: FAILED (see above)"; fi; \
	exit $$status

bench: $(BUILT)
	$(PY) -m bench --quick --device cpu

build: $(BUILT)

$(DEPS):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" numpy pytest ninja "setuptools>=64" wheel matplotlib tqdm
	touch $@

# The checkers have their own stamp, so a venv set up before they were added gets them on its next
# `make lint` or `make test`, without reinstalling torch or rebuilding the extension.
$(LINT_TOOLS): $(DEPS)
	$(PY) -m pip install -q "$(RUFF_SPEC)" "$(LIZARD_SPEC)"
	touch $@

# The extension compiles against the venv's torch: no build isolation. Where nvcc and a CUDA build
# of torch are present, the CUDA extension is compiled too (so CI catches a kernel that does not build).
$(TEST_EXTRAS): $(DEPS)
	$(PY) -m pip install -q $(ONNX_SPECS) $(TEST_SPECS)
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build *.egg-info detlstm/*.so detlstm/_build_record.json $(BUILT)
