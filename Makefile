# The two commands of the README:
#   make demo   trains a small CNN on scikit-learn's digits and writes results into out/demo/
#   make test   runs the whole test suite
# Both create the virtual environment .venv on first use. torch is pinned to the
# CPU build that installs locally in seconds; an unpinned torch pulls a CUDA build.
#
# make docs builds the documentation site into docs/_build/html (Sphinx, warnings as errors,
# every internal reference checked; nothing fetched, the notebooks' stored outputs shown).
#
# make test-floors runs the suite against the oldest versions pyproject.toml declares
# (the pins of .ci/floors.txt) on Python 3.10, in .venv-floors. The same works by hand:
#   make test VENV=.venv-floors CONSTRAINTS=.ci/floors.txt PYTHON=python3.10
PYTHON ?= python3
VENV ?= .venv
# a pip constraints file applied to every install into $(VENV) (e.g. .ci/floors.txt)
CONSTRAINTS ?=
# with constraints, torch's version comes from them, and its CPU build from PyTorch's CPU
# index (PyPI's Linux wheels are CUDA builds with several GB of nvidia-* wheels; where
# that index cannot be reached, pip warns and takes PyPI's)
TORCH_PIN ?= $(if $(CONSTRAINTS),torch,torch==2.13.0)
TORCH_INDEX ?= $(if $(CONSTRAINTS),--extra-index-url https://download.pytorch.org/whl/cpu)
CAPTUM_PIN ?= captum>=0.8,<0.10
FLOORS_PYTHON ?= python3.10
BIN := $(VENV)/bin
PIP_INSTALL = $(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))

.PHONY: demo test test-floors lint docs benchmarks clean

$(VENV)/installed: pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(TORCH_INDEX) "$(TORCH_PIN)"
	$(PIP_INSTALL) "$(CAPTUM_PIN)" -e ".[dev]"
	touch $@

demo: $(VENV)/installed
	$(BIN)/python tutorials/demo.py --output-dir out/demo

test: $(VENV)/installed
	$(BIN)/python -m pytest

test-floors:
	$(MAKE) test VENV=.venv-floors CONSTRAINTS=.ci/floors.txt PYTHON="$(FLOORS_PYTHON)"

lint: $(VENV)/installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# the docs extra is installed on first use only: `make test` needs none of it
$(VENV)/docs-installed: $(VENV)/installed
	$(PIP_INSTALL) -e ".[docs]"
	touch $@

docs: $(VENV)/docs-installed
	$(BIN)/python -m sphinx -b html -W --keep-going -q docs docs/_build/html

benchmarks: $(VENV)/installed
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .venv-floors out docs/_build docs/tutorials
