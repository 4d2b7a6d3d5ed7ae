# brainattn: `make demo` and `make test` each install what they need into .venv first.
# On the project's CPU machines torch 2.14.1 / torchvision 0.29.1 lie on disk (pip takes them
# without downloading); elsewhere override TORCH_PIN, e.g. `make test TORCH_PIN=` to keep yours.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
JOBS ?= 2

.PHONY: demo test install install-test lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@echo "installing brainattn into $(VENV) (first time takes a few minutes)"
	$(if $(strip $(TORCH_PIN)),$(PIP) $(TORCH_PIN))
	$(PIP) -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/brainattn demo --out demo-out --overwrite

test: install-test
	$(VENV)/bin/python -m pytest -n $(JOBS) --dist loadfile -q

lint: install-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache
