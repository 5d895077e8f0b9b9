# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Both set up .venv first: torch 2.13.0 CPU before the project, so no CUDA build is pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGESHIP := $(VENV)/bin/edgeship
BUILD ?= build

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[converter,agent,server,dev]'
	touch $@

demo: setup
	$(PY) -m examples.digits --out $(BUILD)/digits
	test -f $(BUILD)/keys/publisher.key || $(EDGESHIP) keys generate --out $(BUILD)/keys
	$(EDGESHIP) convert --model $(BUILD)/digits/digits_cnn.pt --input image:1x1x8x8:float32 \
		--calib $(BUILD)/digits/calib.npz --eval $(BUILD)/digits/eval.npz \
		--model-name digits-cnn --version 1 --signing-key $(BUILD)/keys/publisher.key \
		--out $(BUILD)/release/digits-cnn-1 --force

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.convert_bench

clean:
	rm -rf $(BUILD)
