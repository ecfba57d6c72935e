# datamaster: `make demo` (set up + run raw -> gold on the embedded lake), `make test`, `make dev`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DATAMASTER_HOME ?= $(CURDIR)/.datamaster

.PHONY: install demo demo-aws test test-fast dev bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[dev]'
	touch $@

# Byte-compile the package: an editable install leaves that to the first import, and where
# PYTHONDONTWRITEBYTECODE is set every process would compile all of it again (~0.1 s a start).
install: $(BIN)/.installed
	$(BIN)/python -m compileall -q datamaster_assets

demo: install
	$(BIN)/datamaster demo

demo-aws: install
	$(BIN)/datamaster demo-aws

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow and not spark"

dev: install
	$(BIN)/datamaster dev

bench: install
	$(BIN)/datamaster bench

clean:
	rm -rf .datamaster .pytest_cache
