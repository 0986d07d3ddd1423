# CareCall: every habit is one target; README, CI (.ci/run) and people call the same ones.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help setup run demo test check lint types format bench services browser clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install CareCall with its dev tools

run: setup ## run the server; embedded PostgreSQL/broker when none is configured or reachable
	$(VENV)/bin/carecall serve

demo: setup ## the server, a demo town (two districts) and the simulator; prints the console URL and logins
	$(VENV)/bin/carecall demo

services: ## start the local PostgreSQL and Mosquitto if they are down
	bash scripts/services.sh

browser: ## install Debian's Chromium for the browser tests (needs root; they skip without it)
	@(command -v chromium && fc-list | grep -qi wqy) >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei) >/dev/null 2>&1 || \
		echo "browser: could not install chromium; the browser tests will be skipped"

test: setup services browser ## run the test suite against the real PostgreSQL and Mosquitto
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

check: lint types ## lint and type-check

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: setup
	$(VENV)/bin/mypy

format: setup ## apply the formatter and safe lint fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup services ## run every benchmark; one Markdown report with charts in bench/results/ (~15 min)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) bench/report.py $(BENCH_ARGS)

clean: ## remove the venv and local state
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
