# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA_DIR ?= $(CURDIR)/.regtune
SPEC   ?= search_spaces/demo.yaml
PYTEST_ARGS ?=

.PHONY: install run serve test test-fast bench bench-quick clean

# torch is pinned to 2.13.0: its CPU wheel is on disk here; an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Embedded stack: local Ray, API on :8000, MLflow UI on :5000, SQLite under $(DATA_DIR);
## submits $(SPEC), follows it, prints the best configuration, serves until Ctrl-C.
run: $(STAMP)
	$(BIN)/regtune up $(SPEC) --data-dir $(DATA_DIR)

serve: $(STAMP)
	$(BIN)/regtune serve --data-dir $(DATA_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
