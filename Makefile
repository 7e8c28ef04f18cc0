# paper-repro: `make repro` (set up + every figure the data on hand allows), `make test`.
# Real data is optional; point the project at it with these variables (or the same names in
# the environment):
#   IMAGENET_DIR      ImageNet validation: class subfolders, or a flat folder + IMAGENET_LABELS
#   IMAGENET_LABELS   ground-truth file "<file> <class index>" for a flat folder
#   WEIGHTS_DIR       folder with the official Keras .h5 weight files
#   PAPER_REPRO_SHARED_DATA  a folder laid out like the project's small real-data sample
#                     (imagenet-val-1300/ + keras-weights/), used by tests and the demo sweep

PYTHON ?= python3
export IMAGENET_DIR IMAGENET_LABELS WEIGHTS_DIR PAPER_REPRO_SHARED_DATA
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup repro figures imagenet test lab bench clean help

help:
	@echo "make repro    set up, then regenerate every figure the data on hand allows"
	@echo "make test     set up, then run the tests and every notebook at smoke size"
	@echo "make figures  execute all notebooks at full size (results/)"
	@echo "make imagenet the ImageNet act on the configured data (IMAGENET_DIR, WEIGHTS_DIR)"
	@echo "make lab      JupyterLab on notebooks/"
	@echo "make bench    speed benchmarks (ratios against a baseline in the same run)"
	@echo "make clean    remove the environment and caches (results/ is kept)"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

repro: setup figures imagenet

figures: setup
	$(BIN)/paper-repro notebooks

imagenet: setup
	$(BIN)/paper-repro imagenet-repro

test: setup
	$(BIN)/python -m pytest -q tests

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
