# Set-up is part of each target: a fresh clone needs only `make train` or `make test`.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/installed: requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

.PHONY: train test
# The quick start: a 4-layer model on CPython's own documentation text, a few minutes on 2 CPU cores.
train: $(VENV)/installed
	$(PY) train_h100.py --preset tiny --batch_size 32 --max_steps 300 --warmup_steps 30 --lr 2e-3 --min_lr 2e-4 \
		--eval_interval 100 --checkpoint_interval 100 --log_interval 10 --out_dir runs/quickstart --overwrite

test: $(VENV)/installed
	$(PY) -m pytest -q
