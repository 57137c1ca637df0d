# Two entry points, both from a fresh clone:  `make quickstart`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch goes in first so that nothing pulls a multi-GB CUDA build; override on GPU machines.
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test bench clean

$(BIN)/loom: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/loom

quickstart: setup
	$(BIN)/python examples/quickstart/generate_data.py
	$(BIN)/loom up examples/quickstart

test: setup
	$(BIN)/python -m pytest -ra

clean:
	rm -rf $(VENV) examples/quickstart/.loom examples/quickstart/data
