# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Python 3.10: the only version the prebuilt Detectron2 wheel supports. Found via pyenv when not on PATH.
PYTHON310 ?= $(shell .ci/find-python310)

.PHONY: setup test test-core demo benchmark clean

setup: $(STAMP)

$(STAMP): requirements-lock.txt setup.cfg setup.py
	@test -n "$(PYTHON310)" || { echo "error: Python 3.10 not found (install it, or set PYTHON310=/path/to/python3.10)"; exit 1; }
	@test -x $(PY) || "$(PYTHON310)" -m venv $(VENV)
	# The lock pins torch 2.3.1; a machine-wide pip constraint capping torch elsewhere must not apply here.
	PIP_CONSTRAINT= PIP_CONFIG_FILE=/dev/null $(PY) -m pip install -q --upgrade "pip<25" wheel
	PIP_CONSTRAINT= PIP_CONFIG_FILE=/dev/null $(PY) -m pip install -q -r requirements-lock.txt
	PIP_CONSTRAINT= PIP_CONFIG_FILE=/dev/null $(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: setup
	# In the project's own venv a missing Detectron2 is a failure, not a skip.
	CROP_CLASSIFIER_REQUIRE_D2=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# Core only (no Detectron2) on a current torch/Python, e.g. `make test-core CORE_PYTHON=python3.12`.
CORE_PYTHON ?= python3.12
CORE_VENV ?= .venv-core
test-core:
	@test -x $(CORE_VENV)/bin/python || $(CORE_PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install -q -e '.[test,onnx]'
	$(CORE_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py

benchmark: setup
	$(PY) tools/benchmark.py --output output/benchmark --quick

clean:
	rm -rf $(VENV) output

# On a GPU machine (recent torch, Python 3.12, no Detectron2): CUDA tests + CUDA benchmark tables, <= 8 min.
.PHONY: gpu-check
gpu-check:
	tools/gpu_check.sh $(GPU_CHECK_ARGS)
