# Conveyor — the commands in DESIGN.md §9. Every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install lock dev test test-fast bench lint proto fmt clean examples-deps examples-gen browser-deps

install: $(STAMP) examples-deps browser-deps

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

# The Go and Node example clients' toolchains and libraries (tests/e2e/test_examples.py
# skips a language without them, saying why). Node: `npm ci` from the lock file, again only
# when the lock file changes. Go: Debian's packages, so neither the Go module proxy nor the
# internet is needed (examples/go/build-offline.sh builds against them), installed only as
# root on a Debian machine that lacks them (about 20 s); elsewhere see examples/go/README.md.
# Neither step fails `make install`.
GO_DEBS := golang-go golang-google-grpc-dev golang-google-protobuf-dev \
	golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
NODE_MODULES := examples/node/node_modules/.package-lock.json

examples-deps: $(NODE_MODULES)
	@if dpkg -s $(GO_DEBS) > /dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; timeout 120 apt-get install -y -q \
			--no-install-recommends $(GO_DEBS) > /dev/null 2>&1 || { timeout 120 apt-get update \
			-q > /dev/null && timeout 120 apt-get install -y -q --no-install-recommends \
			$(GO_DEBS) > /dev/null; } \
			|| echo "examples-deps: apt-get could not install Go; its example's test skips"; \
	else echo "examples-deps: Go's libraries come from the Go module proxy here (examples/go/README.md)"; fi

# Debian's chromium and its driver for the dashboard's browser tests (tests/e2e/test_dashboard.py
# skips without them): installed as root on a Debian machine that lacks them; never a
# downloaded browser build, and never a failed `make install`.
BROWSER_DEBS := chromium chromium-driver
browser-deps:
	@if dpkg -s $(BROWSER_DEBS) > /dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; timeout 300 apt-get install -y -q \
			--no-install-recommends $(BROWSER_DEBS) > /dev/null 2>&1 || { timeout 120 apt-get update \
			-q > /dev/null && timeout 300 apt-get install -y -q --no-install-recommends \
			$(BROWSER_DEBS) > /dev/null; } \
			|| echo "browser-deps: apt-get could not install chromium; the dashboard's browser tests skip"; \
	else echo "browser-deps: no chromium here; the dashboard's browser tests skip (install chromium and chromium-driver)"; fi

$(NODE_MODULES): examples/node/package-lock.json
	@if command -v npm > /dev/null; then \
		cd examples/node && timeout 120 npm ci --no-audit --no-fund --loglevel=error \
			|| echo "examples-deps: npm ci failed; the Node example's test skips"; \
	else echo "examples-deps: no npm; the Node example's test skips"; fi

# Go stubs for examples/go from protos/ (buf.gen.yaml; committed). Needs the local plugins
# protoc-gen-go and protoc-gen-go-grpc (`make examples-deps` as root on Debian, or `go install`).
examples-gen: install
	$(BIN)/buf generate

clean:
	rm -rf $(VENV) .venv-lock .mypy_cache .ruff_cache .pytest_cache
