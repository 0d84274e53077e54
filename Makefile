# pipewave: `make run` trains the default example, `make test` runs the test suite.
# Both create .venv and install the pinned dependencies (constraints.txt) when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip -c constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pipewave train examples/gpt-small.yaml --output runs/gpt-small --no-resume

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m mypy service workers
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py --output benchmarks/results.md

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
