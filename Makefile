# nslab — the two commands a newcomer needs: `sudo make demo` and `sudo make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
NSLAB := $(VENV)/bin/nslab

.PHONY: provision demo test test-fast test-native-memcheck lint format images docs clean

provision:
	@bash scripts/provision.sh

demo: provision
	@$(PY) -m nslab.demo

test: provision lint
	@bash scripts/run-tests.sh

# the native RDMA data path's tests (malformed packets, access checks) under valgrind
test-native-memcheck: provision
	@$(PY) -m pytest -q tests/test_rdma_native.py -k valgrind

test-fast: provision
	@$(PY) -m pytest -q -m "not slow" tests

lint: provision
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: provision
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

images: provision
	@$(NSLAB) images build

# the generated parts of the lab guides: points tables, hand-in lists, topology.svg
docs: provision
	@$(PY) -m nslab.labdocs

clean:
	@if [ -x $(NSLAB) ]; then $(NSLAB) down --all; fi
	rm -rf .pytest_cache .ruff_cache
