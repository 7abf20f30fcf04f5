# Conveyor — the commands in DESIGN.md §9. Every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install lock dev test test-fast bench lint proto fmt clean

install: $(STAMP)

# constraints.txt: the exact versions of everything `.[dev]` brings in (dev tools and type
# stubs included), so a fresh machine lints and tests with what CI does; a change to it
# re-installs. pyproject.toml keeps ranges: users of the library are not pinned.
# compileall: bytecode for the editable sources, as a wheel install has. With
# PYTHONDONTWRITEBYTECODE set, every service start would otherwise compile ~80 modules
# again (~0.1 s of CPU of its start-up).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q src services tests > /dev/null
	touch $(STAMP)

# Refresh constraints.txt: the newest versions pyproject.toml allows, resolved in a scratch
# virtualenv (so nothing else installed here leaks in). Review the diff, then `make install`.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --all --exclude-editable; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

dev: install
	$(BIN)/conveyor dev

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Options for the bench go in ARGS: make bench ARGS='--only drain1,drain_cpu --runs 1'.
bench: install
	$(BIN)/python -m bench $(ARGS)

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
	rm -rf $(VENV) .venv-lock .mypy_cache .ruff_cache .pytest_cache
