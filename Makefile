# fastrader: two commands for a newcomer (see README):
#   make run    install into .venv and run the default backtest
#   make test   install into .venv and run the test suite
#
# torch is installed first and the package is built against it with
# --no-build-isolation: an isolated build (or a bare `pip install torch` on a
# CPU machine) would pull a CUDA torch and gigabytes of CUDA libraries.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

SOURCES := setup.py pyproject.toml $(shell find ext fastrader -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.pyx' -o -name '*.pxd' 2>/dev/null)

.PHONY: install run test bench train sample clean help

help:
	@echo "make run     install into $(VENV) and run the default backtest (python -m fastrader.run)"
	@echo "make test    install into $(VENV) and run the test suite"
	@echo "make bench   run the benchmarks in benchmarks/"
	@echo "make train   retrain the shipped default model (fastrader/assets/default_model.safetensors)"
	@echo "make sample  regenerate the synthetic sample market in data/"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=68" wheel "cython>=3.0" "numpy>=1.26"
	@touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation -e ".[dev,ray]"
	@touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m fastrader.run

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/attention_cpu.py
	$(PY) benchmarks/features.py

train: install
	$(PY) -m fastrader.train

sample: install
	$(PY) -m fastrader.synthetic --out data/sample_btcusdt_1h.csv

clean:
	rm -rf build *.egg-info fastrader/*.so fastrader/**/*.so
