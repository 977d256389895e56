# gomemlimit-operator — every developer and CI entry point.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv lint fmt test unit e2e generate check-generated cluster-build cluster-up cluster-down demo bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP) ## create .venv with the operator and the dev tools

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy

fmt: $(STAMP) ## format and autofix
	$(VENV)/bin/ruff format operator tests bench
	$(VENV)/bin/ruff check --fix operator tests bench

generate: $(STAMP) ## regenerate CRDs and docs from the pydantic models
	$(PY) -m gomemlimit_operator.crdgen --write

test: $(STAMP) cluster-build ## everything: unit, property, Go-runtime and end-to-end tests
	$(PY) -m pytest tests

unit: $(STAMP) ## only the tests that need no cluster
	$(PY) -m pytest tests -m 'not e2e'

e2e: $(STAMP) cluster-build ## only the end-to-end tests against the local control plane
	$(PY) -m pytest tests -m e2e

cluster-build: ## build the pinned control plane from Go modules (cached)
	bash tests/cluster/build.sh

cluster-up: $(STAMP) cluster-build ## start a local control plane on 127.0.0.1; writes .cluster/kubeconfig
	$(PY) tests/cluster/controlplane.py up --dir .cluster

cluster-down: $(STAMP) ## stop the local control plane and clean up (safe to repeat)
	$(PY) tests/cluster/controlplane.py down --dir .cluster

demo: $(STAMP) cluster-build ## cluster + operator + example workload; KEEP=1 keeps it running
	$(PY) examples/demo.py

bench: $(STAMP) ## run the benchmarks under bench/
	$(PY) -m bench

clean: cluster-down ## remove the venv and local state
	rm -rf $(VENV) .cluster
