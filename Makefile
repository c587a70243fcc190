# fastrader: two commands for a newcomer (see README):
#   make run    install into .venv and run the default backtest
#   make test   install into .venv and run the test suite
#
# torch is installed first and the package is built against it with
# --no-build-isolation: an isolated build would pull whatever torch is newest
# into the build environment, and the extension would not load against the
# torch actually installed.
#
# On Linux a plain `pip install torch` from PyPI is the CUDA build (several GB
# of CUDA libraries). For the CPU-only build, point TORCH_INDEX at PyTorch's
# CPU wheel index:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The default (empty) uses pip's configured indexes, which is what works in CI.
# An existing torch in the venv is kept as it is.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# Extras installed for the suite: dev (test tools, reference libraries), ray
# and optuna (the sweep backends; their tests skip without them).
EXTRAS ?= dev,ray,optuna
# Set for the suite: the extension was built here, so it must load (tests fail, not skip).
export FASTRADER_EXPECT_EXT := 1

SOURCES := setup.py pyproject.toml $(shell find ext fastrader -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.inc' -o -name '*.pyx' -o -name '*.pxd' 2>/dev/null)

.PHONY: install run test test-floors bench train sample wheel wheel-check sdist clean help

help:
	@echo "make run          install into $(VENV) and run the default backtest (fastrader run)"
	@echo "make test         install into $(VENV) and run the test suite"
	@echo "make test-floors  the suite against the lowest supported versions (.ci/floors.txt)"
	@echo "make wheel        build dist/fastrader-*.whl against the installed torch"
	@echo "make wheel-check  install that wheel into a fresh venv outside the checkout and run it there"
	@echo "make bench        run the benchmarks in benchmarks/"
	@echo "make train        retrain the shipped default model (fastrader/assets/default_model.safetensors)"
	@echo "make sample       regenerate the synthetic sample market in data/"
	@echo "variables: PYTHON=python3.12  VENV=.venv312  TORCH_INDEX=https://download.pytorch.org/whl/cpu  FASTRADER_NATIVE=1"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Third-party requirements are installed before fastrader, with pip's normal
# build isolation: --no-build-isolation (needed for fastrader itself) would
# also build every third-party sdist against this venv's tools (.ci/deps.py
# says which one breaks that way).
$(VENV)/.deps: pyproject.toml .ci/deps.py | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=68" wheel "cython>=3.0" "numpy>=1.26" ninja
	$(PY) .ci/deps.py $(EXTRAS) > $(VENV)/requirements.txt
	$(PIP) install -q -r $(VENV)/requirements.txt
	@touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/fastrader run

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite against the lowest versions pyproject.toml admits (.ci/floors.txt).
# torch 2.11 has no CPU wheel on the indexes CI reaches: the floors venv gets
# PyPI's build (CUDA libraries, ~3 GB; it runs on a CPU-only machine too).
test-floors:
	PIP_CONSTRAINT=$(CURDIR)/.ci/floors.txt $(MAKE) test VENV=.venv-floors

# The wheel reuses build/ (ninja: only what changed recompiles).
wheel: install
	rm -rf dist && $(PIP) wheel -q --no-build-isolation --no-deps -w dist .

sdist: install
	rm -rf dist-sdist && $(PY) setup.py -q sdist -d dist-sdist

wheel-check: wheel
	$(PY) tests/wheel_check.py dist/fastrader-*.whl

bench: install
	$(PY) benchmarks/attention_cpu.py
	$(PY) benchmarks/features.py

train: install
	$(PY) -m fastrader.train

sample: install
	$(PY) -m fastrader.synthetic --out data/sample_btcusdt_1h.csv

clean:
	rm -rf build dist dist-sdist *.egg-info fastrader/*.so fastrader/**/*.so
