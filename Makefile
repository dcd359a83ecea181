# Prognos: `make demo` runs the system, `make test` proves it, `make bench` measures it.
# Needs only Python 3.11 and make: uv is installed into .tools/ when it is not on PATH.

SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= .prognos

.PHONY: install demo test lint check-protos protos bench clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: $(UV) uv.lock pyproject.toml protos/pyproject.toml services/*/pyproject.toml cli/pyproject.toml
	$(UV) sync --all-packages --frozen --python 3.11
	touch $@

install: $(VENV)/.installed

## Run the whole system on the embedded default: nats-server, SQLite, four services.
demo: install
	$(VENV)/bin/prognos up --data-dir $(DATA_DIR)

## Regenerate the Python code of the protos (the one way to do it).
protos: install
	$(PY) protos/generate.py

## Generated code is current, protos lint clean and stay compatible with main.
check-protos: install
	$(PY) protos/generate.py --check
	$(VENV)/bin/buf lint protos
	@if git rev-parse --verify --quiet main >/dev/null; then \
		$(VENV)/bin/buf breaking protos --against '.git#branch=main,subdir=protos'; \
	else echo "buf breaking: no main branch to compare with, skipped"; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install lint check-protos
	$(VENV)/bin/pytest

## Throughput and latency, printed as JSON (also saved under .bench/).
bench: install
	@mkdir -p .bench
	@set -e; for b in tests/benchmarks/bench_*.py; do \
		name=$$(basename $$b .py); \
		echo "== $$name" >&2; \
		$(PY) $$b | tee .bench/$$name.json; \
	done

clean:
	rm -rf $(VENV) .tools .bench .pytest_cache $(DATA_DIR)
