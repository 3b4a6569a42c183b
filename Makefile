# fraudstream: two commands on a fresh machine (Python 3.11 + make):
#   make up     run the whole stack on the embedded broker and PostgreSQL
#   make test   lint + the whole test suite, against real components
# Both create .venv and install what they need.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
FULL_DATA ?= ../shared/data/creditcard.csv.gz

.PHONY: up test lint bench bench-stream bench-train bench-api bench-scale install install-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[test]"
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	bash scripts/install-chromium.sh

up: install
	$(PY) -m fraudstream up

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install-test lint
	$(PY) -m pytest -q

bench: bench-train bench-stream bench-api

bench-train: install
	$(PY) -m bench.train --data $(FULL_DATA)

bench-stream: install
	$(PY) -m bench.stream --data $(FULL_DATA)

bench-api: install
	$(PY) -m bench.api --data $(FULL_DATA)

bench-scale: install
	$(PY) -m bench.scale --data $(FULL_DATA)

clean:
	rm -rf .fraudstream artifacts .pytest_cache
