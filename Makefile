# Two commands do all the set-up on a fresh machine:
#   make demo   installs what is missing, then runs the whole DAG on the embedded synthetic default
#   make test   installs what is missing, then lints and runs the test suite (slow end-to-end tests: make test-slow)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, on its own: here the pinned wheels lie on local disk; elsewhere pick your CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CORES ?= all
PYTEST_ARGS ?=

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test test-slow bench bench-check lint format clean-results

install: $(VENV)/.installed

# The project's dependencies at the versions the rules' env pins (workflow/envs/cxrbench.yaml, the tested set), so
# a new release upstream changes nothing until the pins move; `make install PINNED=` takes pyproject's ranges instead.
# torch / torchvision stay out of the constraints: TORCH_SPEC picks them.
PINNED ?= workflow/envs/cxrbench.yaml

$(VENV)/.installed: pyproject.toml $(PINNED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(if $(PINNED),sed -n 's/^ *- \([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' $(PINNED) | grep -v -E '^(torch|torchvision)==' \
		> $(VENV)/constraints.txt,: > $(VENV)/constraints.txt)
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES)
	@echo "results: results/report/tables/ (the papers' tables), results/report/figures/, snakemake --report report.html"

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

test: lint
	$(BIN)/python -m pytest -m "not slow and not benchmark" $(PYTEST_ARGS)

# --durations=0: every slow test's time in the log (CI must finish in 30 minutes: .ci/run)
test-slow: install
	$(BIN)/python -m pytest -m "slow" --durations=0 $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pytest -m benchmark --benchmark-enable --benchmark-columns=min,mean,ops tests $(PYTEST_ARGS)

# CI: every benchmark's assertions, each function run once (pytest-benchmark disabled); `make bench` times rounds
bench-check: install
	$(BIN)/python -m pytest -m benchmark tests $(PYTEST_ARGS)

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/snakefmt Snakefile workflow

clean-results:
	rm -rf results/runs results/logs results/benchmarks results/report data/prepared data/checkpoints data/checkpoints.work data/features data/synthetic .snakemake
