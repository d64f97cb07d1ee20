# diffscale: `make demo` and `make test` are the two commands of the quick start.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast imports lint format clean papers validation

# The venv is rebuilt when the project's dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diffscale run configs/quickstart.yaml

# The import contracts first (a second): a layer importing upwards, or a cycle, fails the run.
test: $(STAMP) imports
	$(BIN)/pytest -q

imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Every paper table (configs/papers/, papers/*.csv) -> reports/papers/; runs stored are reused.
papers: $(STAMP)
	$(BIN)/diffscale reproduce all --anchor single-device

# The projection's validation ladder -> reports/projection_gpu/VALIDATION.md (after `make papers`
# and the projection_cpu sweep: see the README's "How accurate is a projection").
validation: $(STAMP)
	$(BIN)/python benchmarks/projection_validation.py

lint: $(STAMP)
	$(BIN)/ruff check suite workloads analysis benchmarks tools tests
	$(BIN)/ruff format --check suite workloads analysis benchmarks tools tests

format: $(STAMP)
	$(BIN)/ruff format suite workloads analysis benchmarks tools tests
	$(BIN)/ruff check --fix suite workloads analysis benchmarks tools tests

clean:
	rm -rf $(VENV) results .pytest_cache
