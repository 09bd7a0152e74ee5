# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genforge-installed
# `make repro PIPELINE=stages/names/dvc.yaml` replays the names chain (params-names.yaml)
PIPELINE ?= dvc.yaml

# offline and self-contained: no telemetry, Prefect state under the project, not $HOME
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
# faster PyTorch eager inference on CPU (fewer page faults on large activations)
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184
# OpenMP threads sleep instead of spinning when idle: on a busy 2-core machine spinning made torch 5-40x slower
export OMP_WAIT_POLICY ?= PASSIVE
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-all repro bench browser clean

setup: $(STAMP)

# reinstalls only when the dependency list or the pinned working set changed
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

run: setup
	$(BIN)/genforge run

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ""

repro: setup
	$(BIN)/dvc repro $(PIPELINE)

bench: setup
	for f in benchmarks/*.py; do case $$f in */family_table.py) continue;; esac; \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done  # family_table.py reads the projects it is given

# headless Chromium for the slow tests that open review.html and the MLflow UI (Debian's package; needs root)
browser:
	apt-get update && apt-get install -y chromium

clean:
	rm -rf $(VENV) .pytest_cache
