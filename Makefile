# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA_DIR ?= $(CURDIR)/.regtune
SPEC   ?= search_spaces/demo.yaml
PYTEST_ARGS ?=

.PHONY: install system-deps run serve test test-fast bench bench-quick clean

# torch is pinned to 2.13.0: its CPU wheel is on disk here; an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## System packages the tests use, each installed only when missing (Debian/Ubuntu; as
## root or through sudo): chromium drives the MLflow UI in tests/deploy/test_mlflow_ui.py;
## docker-compose (the client alone, without the engine it recommends) validates
## docker-compose.yml offline. Without apt-get, those tests skip and say why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
system-deps:
	@if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "system-deps: no apt-get here; install chromium and docker-compose yourself"; exit 0; fi; \
	updated=""; \
	if ! command -v chromium >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && updated=1 && $(APT_INSTALL) chromium; fi; \
	if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then \
	  { [ -n "$$updated" ] || $(SUDO) apt-get update -qq; } && \
	  $(APT_INSTALL) --no-install-recommends docker-compose; fi

## Embedded stack: local Ray, API on :8000, MLflow UI on :5000, SQLite under $(DATA_DIR);
## submits $(SPEC), follows it, prints the best configuration, serves until Ctrl-C.
run: $(STAMP)
	$(BIN)/regtune up $(SPEC) --data-dir $(DATA_DIR)

serve: $(STAMP)
	$(BIN)/regtune serve --data-dir $(DATA_DIR)

test: system-deps $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
