# Set-up is part of each target: a fresh clone needs only `make train` or `make test`.
# .venv is built from exact pins (docs/install.md): requirements.lock (CPU build of torch) or, after
# `make install-gpu`, requirements-gpu.lock (torch 2.11.0 for CUDA 13.0); requirements-dev.lock (pytest) in both;
# then the package itself, editable, with its console scripts (cs336-train, cs336-generate, cs336-verify, cs336-bench).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --no-input
CPU_LOCK := requirements.lock
GPU_LOCK := requirements-gpu.lock
DEV_LOCK := requirements-dev.lock
# The lock .venv was built from, remembered in .venv/lock: after `make install-gpu`, `make train` and `make test`
# keep the CUDA build instead of reinstalling the CPU one.
ifeq ($(origin LOCK),undefined)
LOCK := $(or $(shell cat $(VENV)/lock 2>/dev/null),$(CPU_LOCK))
endif

# The quick start: a 4-layer model on CPython's own documentation text, a few minutes on 2 CPU cores.
# configs/tiny.toml holds its settings.
TRAIN_ARGS := --config tiny --out_dir runs/quickstart --overwrite

.PHONY: train test install install-gpu

$(VENV)/installed: $(LOCK) $(DEV_LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -r $(LOCK) -r $(DEV_LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	echo $(LOCK) > $(VENV)/lock
	touch $@

install: $(VENV)/installed

# A CUDA machine, from scratch: a new .venv from the GPU lock (PyPI's torch 2.11.0 wheel is the CUDA 13.0 build).
# The benchmarks ran on Python 3.12: `make install-gpu PYTHON=python3.12` where python3 is another version.
install-gpu:
	rm -rf $(VENV)
	$(MAKE) --no-print-directory $(VENV)/installed LOCK=$(GPU_LOCK) PYTHON=$(PYTHON)
	$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU available:', torch.cuda.is_available())"

train: $(VENV)/installed
	$(VENV)/bin/cs336-train $(TRAIN_ARGS)

test: $(VENV)/installed
	$(PY) -m pytest -q
