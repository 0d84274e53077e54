# pipewave: `make run` starts the service with the default example job submitted (dashboard on
# http://127.0.0.1:8000), `make train` trains it from the command line, `make test` runs the tests.
# All create .venv and install the pinned dependencies (constraints.txt) when missing; `make test`
# also installs Debian's Chromium for the dashboard's browser test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGIN := examples/pipewave-mixer

.PHONY: install browser run train test typecheck bench clean

# the example model plugin (examples/pipewave-mixer) is installed with pipewave, in one resolve (its
# dependency `pipewave` is this checkout, never an index's): the tests train it
$(STAMP): pyproject.toml constraints.txt $(PLUGIN)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip -c constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[server,dev]' -e $(PLUGIN)
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium (the dashboard test drives it with Playwright); needs root, as in CI
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)

run: $(STAMP)
	$(BIN)/pipewave serve --submit examples/gpt-small.yaml

train: $(STAMP)
	$(BIN)/pipewave train examples/gpt-small.yaml --output runs/gpt-small --no-resume

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(MAKE) typecheck
	@start=$$(date +%s); $(BIN)/python -m pytest; rc=$$?; \
		echo "test suite wall time: $$(( $$(date +%s) - start )) s"; exit $$rc

# mypy names modules by their folders; the code's folders install as pipewave.*, so mypy reads
# them through a tree of links with the installed names (build/typecheck/pipewave/...).
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/pipewave
	for d in cli api service workers; do ln -s ../../../$$d build/typecheck/pipewave/$$d; done
	MYPYPATH=build/typecheck $(BIN)/python -m mypy -p pipewave

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py --output benchmarks/results.md

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
