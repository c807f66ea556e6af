# `make test` and `make demo` work on a fresh machine: they create .venv and install the
# project with the exact pins in constraints.txt before doing anything else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[export,openvino,dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh runs/demo

bench: setup
	mkdir -p runs/bench
	$(PY) benchmarks/run.py --json runs/bench/results.json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
