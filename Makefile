# Quick start: `make demo` (set up, build, run the reproducibility demo) and `make test` (the suite).
# Each sets up .venv on first use: torch, the test tools, then detlstm built against that torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.detlstm-built
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test bench build clean

demo: $(BUILT)
	$(PY) -m detlstm

test: $(BUILT)
	$(PY) -m pytest -q tests

bench: $(BUILT)
	$(PY) -m bench --quick --device cpu

build: $(BUILT)

$(DEPS):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" numpy pytest ninja "setuptools>=64" wheel matplotlib tqdm
	touch $@

# The extension compiles against the venv's torch: no build isolation. Where nvcc and a CUDA build
# of torch are present, the CUDA extension is compiled too (so CI catches a kernel that does not build).
$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build *.egg-info detlstm/*.so $(BUILT)
