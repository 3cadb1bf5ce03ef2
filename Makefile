# One command per loop: make install | test | lint | format | bench | demo.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install test lint format bench demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Brings up PostgreSQL if needed (scripts/ensure-test-postgres.sh); the suite creates and
# drops its own databases on that server.
test: install
	url="$$(scripts/ensure-test-postgres.sh)" && TEST_DATABASE_URL="$$url" $(PY) -m pytest $(PYTEST_ARGS)

# ruff (style, likely bugs), then mypy (types; configured in pyproject.toml, [tool.mypy]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	url="$$(scripts/ensure-test-postgres.sh)" && TEST_DATABASE_URL="$$url" $(PY) -m benchmarks.run $(BENCH_ARGS)

# The tool end to end on examples/artists.csv against the project's stand-in API server and a
# local PostgreSQL (scripts/demo.sh): no OpenAI key needed; stops what it started.
demo: install
	PY=$(PY) scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
