# Set-up and everyday commands. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,text]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/marketrec demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Full-size quality runs (minutes); results go to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/ml100k.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
