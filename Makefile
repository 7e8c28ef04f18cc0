# paper-repro: `make repro` (set up + every figure the data on hand allows), `make test`.
# Real data is optional: `make data` downloads the small real sample (1300 ImageNet validation
# images, MobileNet 0.75 and ShuffleNetV2 weights; checksummed) into ~/.cache/paper-repro/data,
# where every command finds it. Variables (or the same names in the environment):
#   PAPER_REPRO_DATA  where `make data` puts the sample and where it is looked for
#   PAPER_REPRO_SHARED_DATA  another folder with the same layout (takes precedence)
#   IMAGENET_DIR      full ImageNet validation: class subfolders, or flat + IMAGENET_LABELS
#   IMAGENET_LABELS   ground-truth file "<file> <class index>" for a flat folder
#   WEIGHTS_DIR       folder with the official Keras .h5 weight files (paper models)

PYTHON ?= python3
export IMAGENET_DIR IMAGENET_LABELS WEIGHTS_DIR PAPER_REPRO_SHARED_DATA PAPER_REPRO_DATA
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup repro figures notebooks book data imagenet test lab bench clean help

help:
	@echo "make repro    set up, then every figure and executed notebook the data on hand allows"
	@echo "make test     set up, then run the tests and every notebook at smoke size"
	@echo "make figures  run every declared experiment (reuses results/ when up to date)"
	@echo "make notebooks execute the notebooks into results/notebooks/ (with their figures)"
	@echo "make book     build the offline HTML book (docs + executed notebooks) in build/book/"
	@echo "make data     download the small real-data sample and weights (checksummed)"
	@echo "make imagenet the paper models on full ImageNet (IMAGENET_DIR, WEIGHTS_DIR)"
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

repro: setup figures notebooks

figures: setup
	$(BIN)/paper-repro figures

notebooks: setup
	$(BIN)/paper-repro notebooks

book: setup
	$(BIN)/paper-repro book

data: setup
	$(BIN)/paper-repro data fetch all

imagenet: setup
	$(BIN)/paper-repro imagenet-repro --skip-digits

test: setup
	JAX_COMPILATION_CACHE_DIR=$${JAX_COMPILATION_CACHE_DIR:-$(CURDIR)/.pytest_cache/jax} $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal tests

lab: setup
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks/

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
