# Every target sets up what it needs on a fresh machine (Python 3.10+ with venv).
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= pipeline.toml
ifdef TRTLLM_PIPELINE_IMAGE
# Inside docker/Dockerfile's image: its Python, with the project installed at image build time.
PY := python3
CLI := trtllm-pipeline
STAMP := $(TRTLLM_PIPELINE_IMAGE)/.installed-stamp
else
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/trtllm-pipeline
STAMP := $(VENV)/.installed-stamp
endif

.PHONY: setup test demo build-engine gpu-selftest bench lint lock clean

setup: $(STAMP)

ifdef TRTLLM_PIPELINE_IMAGE
$(STAMP):
	@echo "$(STAMP) is missing: build the image with docker/Dockerfile, which installs the project" >&2 && false
else
# Idempotent: reinstalls only when the dependency spec or the lock changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)
endif

test: setup
	$(PY) -m pytest -q --junitxml=reports/junit-tests.xml

# The whole pipeline on the embedded default: the tiny Mistral on the CPU target, then each
# published repository served by a real tritonserver and checked against the reference runtime.
demo: setup
	$(CLI) run
	$(CLI) smoke

# The real job (pipeline.toml: Mistral-7B-Instruct-v0.3, A100 40GB) on a GPU host.
build-engine: setup
	$(CLI) run --config $(CONFIG)

# Inside the serving container on a GPU host: a small model through a real trtllm-build, the gate,
# publish and the image's tritonserver; a pass/fail table and work/gpu-selftest/report.json.
gpu-selftest: setup
	$(CLI) gpu-selftest

bench: setup
	$(PY) -m benchmarks

lint: setup
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/ruff format --check pipeline tests benchmarks

# Re-resolve the lock after changing pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade "pip>=24" && .lock-venv/bin/pip install -q "torch==2.13.0" -e ".[dev]"
	( head -4 constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | sed 's/+cpu//' ) > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf work reports model_repository .pytest_cache
