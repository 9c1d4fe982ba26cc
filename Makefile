# `make test` on a fresh machine: create .venv, install torch 2.13.0 first (a CPU wheel; an unpinned torch pulls
# several GB of CUDA packages), then the package with its dev extra, then run the suite in one pytest process.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install test lint clean bench demo

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): $(PYTHON) pyproject.toml
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m pytest

# The embedded benchmark: a synthetic English/Tolan world, pretraining from scratch and every transfer method over
# 3 seeds on the CPU (about 5 minutes on 2 cores); prints the table, writes the report under demo/.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/flare-xlt demo

# Benchmarks of LoRA, FLARE and the MT pipeline side by side (about 5-8 minutes on 2 cores): benchmarks/RESULTS.md.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m benchmarks.run

lint: $(STAMP)
	$(VENV)/bin/ruff check flare_xlt tests
	$(VENV)/bin/ruff format --check flare_xlt tests

clean:
	rm -rf $(VENV) .pytest_cache
