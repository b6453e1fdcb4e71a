# Voxmesh — the two commands are `make run` and `make test`; everything else is
# what they are made of. Each target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_FILES := $(wildcard protos/voxmesh/v1/*.proto)
PROTO_STAMP := voxmesh/v1/.generated-stamp
export HF_HUB_OFFLINE := 1
export GRPC_VERBOSITY ?= ERROR

.PHONY: help install protos console browser run migrate sample-data test test-only test-data lint fmt bench clean

help:
	@echo "make run          set up and run the platform on embedded defaults"
	@echo "make test         set up, lint, and run the test suite"
	@echo "make sample-data  load demo users, projects, jobs and settings (ARGS=--clear resets)"
	@echo "make lint | fmt | protos | bench | clean"

# --- setup -----------------------------------------------------------------
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'openai-whisper==20250625'
	$(PY) -m pip install --quiet tiktoken more-itertools numba
	touch $@

# Speech for the STT tests, from Debian: real recordings with transcripts (LibriVox, public
# domain, in pocketsphinx-testdata) and a synthesiser for other languages (espeak-ng).
# Installed when this user may; otherwise those tests say what is missing.
SPEECH := /usr/share/pocketsphinx/test/data/librivox/transcription
DEBIAN_TEST_PACKAGES := pocketsphinx-testdata espeak-ng
test-data:
	@if [ -f $(SPEECH) ] && command -v espeak-ng >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq $(DEBIAN_TEST_PACKAGES) >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq $(DEBIAN_TEST_PACKAGES))) >/dev/null; \
	else echo "note: install Debian's $(DEBIAN_TEST_PACKAGES) for the STT quality tests"; fi

install: $(STAMP) $(PROTO_STAMP)

# Generated code is not committed: it is written here from protos/ at setup,
# so it can never drift from the API it is generated from.
$(PROTO_STAMP): $(STAMP) $(PROTO_FILES)
	rm -f voxmesh/v1/*_pb2*.py voxmesh/v1/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_FILES)
	touch $@

protos: $(PROTO_STAMP)

# The web console: npm packages (console/package-lock.json), TypeScript generated from protos/
# by protoc-gen-es through grpc_tools' protoc, bundled by esbuild into console/dist/.
CONSOLE_NPM := console/node_modules/.installed-stamp
CONSOLE_STAMP := console/dist/.built-stamp
CONSOLE_SOURCES := $(wildcard console/src/*.ts) console/index.html console/app.css console/favicon.svg console/build.mjs console/tsconfig.json
$(CONSOLE_NPM): console/package.json console/package-lock.json
	cd console && npm ci --no-audit --no-fund --loglevel=error
	touch $@
$(CONSOLE_STAMP): $(CONSOLE_NPM) $(PROTO_STAMP) $(CONSOLE_SOURCES)
	rm -rf console/src/gen && mkdir -p console/src/gen
	$(PY) -m grpc_tools.protoc -I protos --plugin=protoc-gen-es=console/node_modules/.bin/protoc-gen-es \
	  --es_out=console/src/gen --es_opt=target=ts $(PROTO_FILES)
	cd console && npm run --silent build
	touch $@
console: $(CONSOLE_STAMP)

# Debian's Chromium for the browser tests (driven by playwright-core; never a downloaded browser).
browser:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; \
	else echo "note: install Debian's chromium for the browser tests"; fi

# --- the platform ----------------------------------------------------------
run: install console
	$(PY) -m voxmesh.launch

migrate: install
	$(BIN)/voxmesh-control migrate

sample-data: install
	$(BIN)/voxmesh-control sample-data $(ARGS)

# --- quality ---------------------------------------------------------------
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint test-only

test-only: install test-data console browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The peer the short-job bench compares with, in the bench's own environment (never the
# platform's): an OpenAI-compatible faster-whisper server, given the same local model.
PEER := .bench/peer
PEER_STAMP := $(PEER)/.installed-stamp
$(PEER_STAMP):
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -m pip install --quiet 'faster-whisper-server==0.0.3'
	touch $@

bench: install test-data $(PEER_STAMP)
	$(PY) -m tests.bench.control_bench
	$(PY) -m tests.bench.mesh_bench
	$(PY) -m tests.bench.replicas_bench
	$(PY) -m tests.bench.watch_load
	$(PY) -m tests.bench.stt_bench
	$(PY) -m tests.bench.peer_bench
	$(PY) -m tests.bench.tts_bench
	$(PY) -m tests.bench.http_bench
	$(PY) -m tests.bench.stories_eval --words 120

clean:
	rm -rf $(VENV) *.egg-info voxmesh/v1/*_pb2*.py voxmesh/v1/*_pb2*.pyi $(PROTO_STAMP) .test-output \
	  console/node_modules console/dist console/src/gen
