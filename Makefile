# Every target creates the virtualenv and installs what it needs on first use,
# so on a fresh clone `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
LINT_STAMP := $(VENV)/.installed-lint

.PHONY: demo test bench lint clean serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,postgres,redis]'
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --group test
	touch $@

$(LINT_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --group lint
	touch $@

demo: $(STAMP)
	$(BIN)/bastion demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(LINT_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .bastion .bastion-demo .pytest_cache
