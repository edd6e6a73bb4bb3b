# One entry point per job. Each target installs what it needs, so a fresh
# machine only needs `make test` or `make demo`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: test lint unit demo bench bench-quick system-deps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	@bash .ci/system-deps

lint: $(STAMP)
	$(VENV)/bin/ruff check agent connectors tests bench demo
	$(VENV)/bin/mypy

test: system-deps $(STAMP) lint
	$(VENV)/bin/pytest -n 2 --dist loadgroup tests

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit

demo: system-deps $(STAMP)
	$(PY) -m demo.run

bench: system-deps $(STAMP)
	$(PY) -m bench.run

bench-quick: system-deps $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
