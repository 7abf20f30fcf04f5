# Conveyor — the commands in DESIGN.md §9. Every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install dev test test-fast bench lint proto fmt clean

install: $(STAMP)

# compileall: bytecode for the editable sources, as a wheel install has. With
# PYTHONDONTWRITEBYTECODE set, every service start would otherwise compile ~80 modules
# again (~0.1 s of CPU of its start-up).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m compileall -q src services tests > /dev/null
	touch $(STAMP)

dev: install
	$(BIN)/conveyor dev

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

proto: install
	$(BIN)/python scripts/gen_protos.py

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
