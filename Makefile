# gomemlimit-operator — every developer and CI entry point.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The pinned tool versions; promtool comes from the binary cache that build.sh fills.
include tests/cluster/versions.env
CACHE := $(or $(GOMEMLIMIT_CACHE),$(HOME)/.cache/gomemlimit-operator)
TOOLS_PATH := $(CACHE)/bin/prometheus-$(PROMETHEUS_VERSION):$(PATH)

.PHONY: help venv lint fmt test unit e2e generate check-generated cluster-build host-deps tools image cluster-up cluster-down demo proof-chart bench bench-quick clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

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

HELM := $(CACHE)/bin/helm-$(HELM_VERSION)/helm

generate: $(STAMP) ## regenerate CRDs, docs, the chart's generated files and deploy/
	$(PY) -m gomemlimit_operator.install.crds --write
	$(PY) -m gomemlimit_operator.install.chart --write
	test -x $(HELM) || bash tests/cluster/build.sh
	$(PY) -m gomemlimit_operator.install.manifests --helm $(HELM) --write

test: $(STAMP) cluster-build host-deps ## everything: unit, property, Go-runtime and end-to-end tests
	PATH="$(TOOLS_PATH)" $(PY) -m pytest tests

unit: $(STAMP) tools ## only the tests that need no cluster
	PATH="$(TOOLS_PATH)" $(PY) -m pytest tests -m 'not e2e'

e2e: $(STAMP) cluster-build host-deps ## only the end-to-end tests against the local control plane
	PATH="$(TOOLS_PATH)" $(PY) -m pytest tests -m e2e

cluster-build: ## build the pinned control plane, kubelet and promtool from Go modules (cached)
	bash tests/cluster/build.sh

tools: ## only promtool/prometheus (cached), for the unit tests
	bash tests/cluster/build.sh prometheus

host-deps: ## the real node's containerd and runc (Debian packages; installs them as root)
	bash tests/cluster/host-deps.sh

image: $(STAMP) ## the operator's image as a docker-archive, no daemon or registry (cached; needs root the first time)
	$(PY) -m tests.cluster.operator_image build

cluster-up: $(STAMP) cluster-build host-deps ## start a local cluster on 127.0.0.1 (with a real node when possible)
	$(PY) -m tests.cluster.controlplane up --dir .cluster

cluster-down: $(STAMP) ## stop the local control plane and clean up (safe to repeat)
	$(PY) -m tests.cluster.controlplane down --dir .cluster

demo: $(STAMP) cluster-build host-deps ## cluster + operator + example workload + the proof; KEEP=1 keeps it running
	$(PY) -m examples.demo

proof-chart: $(STAMP) ## redraw docs/proof-memory.png from docs/proof-samples.json
	$(PY) docs/proof_chart.py docs/proof-samples.json docs/proof-memory.png

bench: $(STAMP) ## every benchmark under bench/, full size: bench/results/latest.json and its charts
	$(PY) -m bench
	$(PY) -m bench.charts bench/results/latest.json

bench-quick: $(STAMP) ## every benchmark, reduced (CI; asserts no speed): bench/results/quick.json
	$(PY) -m bench --quick
	charts=$$(mktemp -d) && $(PY) -m bench.charts bench/results/quick.json --out-dir $$charts; \
	status=$$?; rm -rf $$charts; exit $$status

clean: cluster-down ## remove the venv and local state
	rm -rf $(VENV) .cluster
