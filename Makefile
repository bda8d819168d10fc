# The README's two commands: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch installs from a local file; an unpinned torch pulls a multi-GB CUDA build.
# Override for a GPU machine, e.g. `make test TORCH_SPEC='torch==2.11.0'`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,train
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stream_avatar-installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m stream_avatar run

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check stream_avatar tests benchmarks
	$(PY) -m mypy stream_avatar

bench: install
	$(PY) benchmarks/bench_render.py
	$(PY) benchmarks/bench_e2e.py

clean:
	rm -rf $(VENV) build *.egg-info
