# The two commands of the README:
#   make demo   trains a small CNN on scikit-learn's digits and writes results into out/demo/
#   make test   runs the whole test suite
# Both create the virtual environment .venv on first use. torch is pinned to the
# CPU build that installs locally in seconds; an unpinned torch pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
CAPTUM_PIN ?= captum>=0.8,<0.10
BIN := $(VENV)/bin

.PHONY: demo test lint benchmarks clean

$(VENV)/installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet "$(CAPTUM_PIN)" -e ".[dev]"
	touch $@

demo: $(VENV)/installed
	$(BIN)/python tutorials/demo.py --output-dir out/demo

test: $(VENV)/installed
	$(BIN)/python -m pytest

lint: $(VENV)/installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

benchmarks: $(VENV)/installed
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) out
