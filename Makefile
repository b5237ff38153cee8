# The two front-door commands: `make demo` (main job on the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench-setup

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/vitq quantize --overwrite

test: setup
	@$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check src tests scripts benchmarks

# The full Fashion-MNIST (Debian dataset-fashion-mnist) that `vitq bench` evaluates on.
bench-setup: setup
	@bash scripts/setup_fmnist.sh
