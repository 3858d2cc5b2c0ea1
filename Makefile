# The two set-up commands of the README. Each creates .venv if missing and installs the project.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help repro test install clean-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --upgrade "pip>=23" >/dev/null
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install maskcl with its dependencies

repro: $(STAMP)  ## run the whole DVC pipeline (synthetic dataset by default)
	@if [ ! -d .git ]; then echo "make repro needs a git checkout (DVC experiments need a commit)"; exit 2; fi
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest -q

clean-venv:  ## remove the virtual environment
	rm -rf $(VENV)
