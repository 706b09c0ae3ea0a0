# Two entry points a newcomer needs: `make demo` (main job on bundled data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast lint clean

$(BIN)/ssl-distill: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/ssl-distill

demo: install
	$(BIN)/python -m ssl_distill.demo

test: install
	$(BIN)/python -m pytest tests

test-fast: install  # the inner loop: everything but the tests marked slow, under a minute
	$(BIN)/python -m pytest tests -m "not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
