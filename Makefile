# Two commands for a newcomer on a fresh machine:
#   make demo   set up .venv and run the whole job on the built-in synthetic data (CPU: minutes)
#   make test   set up .venv with the test extras and run the test suite
# and, before a pull request, `make lint` (ruff lint and format check, mypy; config in pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup demo lint test test-fast

$(VENV)/.installed: pyproject.toml examples/sassl-barlow/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]" -e examples/sassl-barlow
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sassl run --ssl simsiam --task seg --out runs/demo --overwrite

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
