# Two entry points, both from a fresh clone:  `make quickstart`  and  `make test`.
# `make demo-drift` (ARGS=--worse) shows the retrain loop close itself on drifted traffic, in a temporary copy.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch goes in first so that nothing pulls a multi-GB CUDA build; override on GPU machines.
TORCH ?= torch==2.13.0

.PHONY: setup setup-dev quickstart demo-drift screenshot test bench clean

# The runtime alone: what the main job needs.
$(VENV)/.runtime: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

# The test extras on top (MLflow, Feast, SQL drivers, schemathesis, tritonclient).
$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.runtime

setup-dev: $(VENV)/.dev

# `loom up` makes the example's data itself (data.generate in its loom.yaml) when there is none.
quickstart: setup
	$(BIN)/loom up examples/quickstart

# The retrain loop, live: drift -> retrain -> shadow -> canary -> promoted (rolled back with ARGS=--worse).
demo-drift: setup
	$(BIN)/python examples/quickstart/demo_drift.py $(ARGS)

# The console (/ui) after the drift demo's round, in headless Chromium: docs/img/console-*.png (the README shows them).
screenshot: setup-dev
	$(BIN)/python examples/quickstart/console_screenshot.py $(ARGS)

test: setup-dev
	$(BIN)/python -m pytest -ra

clean:
	rm -rf $(VENV) examples/quickstart/.loom examples/quickstart/data
