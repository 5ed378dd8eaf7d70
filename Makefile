# Two entry points for a new user: `make demo` and `make test`.
# Both create (or reuse) .venv and install torch==2.13.0 before the project.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	@echo "== creating the virtual environment $(VENV) (once)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== upgrading pip"
	$(BIN)/pip install --quiet --upgrade pip
	@echo "== installing torch==2.13.0 (CPU build, about 200 MB; a few minutes)"
	$(BIN)/pip install --progress-bar on torch==2.13.0
	@echo "== installing diffmm and its dependencies (numpy, scipy, pandas, FastAPI, ...)"
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "== set-up done"

demo: $(STAMP)
	$(BIN)/diffmm demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
