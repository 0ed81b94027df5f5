# Every target creates .venv itself, so a fresh clone needs nothing but `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test lint demo screenshot bench chaos clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

# Provisioning comes first: on a fresh machine it installs python3-venv, which .venv needs.
test: ## Run the whole test suite; scripts/provision first installs and starts what it needs
	scripts/provision
	@$(MAKE) -s --no-print-directory $(STAMP)
# make exits 2 for any failing recipe, so the reason of pytest's 5 (no test collected) is said here.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): a failure" >&2; fi; \
	  exit $$rc

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy kling models worker webhook klingctl bench chaos

demo: $(STAMP) ## Run the one-command demo (simulator, webhook, worker, embedded S3)
	$(BIN)/klingctl demo

screenshot: $(STAMP) ## Run the demo and save its dashboard to docs/dashboard.png (needs chromium, chromium-driver)
	$(BIN)/python scripts/dashboard_screenshot.py

bench: $(STAMP) ## Run the benchmarks against their baselines (writes bench/results.json)
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: $(STAMP) ## Fault-injection suite: private stack, 11 faults with 50 jobs in flight, one with a 5,000-job backlog (CHAOS_ARGS=--short)
	$(BIN)/python -m chaos $(CHAOS_ARGS)

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
