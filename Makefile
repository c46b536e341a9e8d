# The README's commands. Each installs what it needs into $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PORT ?= 3000

.PHONY: install run test test-fast check lint bench clean

$(BIN)/etl-jobs: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/etl-jobs

# The embedded default: SQLite in ./.dagster_home, Dagster UI + daemon, the demo batch queued.
run: install
	$(BIN)/etl-jobs stack --demo --port $(PORT)

# Lint and types: ruff, and mypy (strict on the lifecycle rules and the job table).
check: install
	$(BIN)/ruff check etl_pipelines etl_pipelines_tests bench
	$(BIN)/ruff format --check etl_pipelines etl_pipelines_tests bench
	$(BIN)/mypy

# The rules in seconds, no services: the lifecycle table, retry policy, recovery diagnosis, sensors,
# definitions and the job table on SQLite in memory (tests not marked slow).
test-fast: check
	$(BIN)/pytest -m "not slow"

# The whole suite, against PostgreSQL and Redis on 127.0.0.1 (see README, Tests). The browser test
# needs Chromium, the alert rules' checks promtool: both installed from Debian's packages if missing.
test: check
	@test -x "$${ETL_TEST_CHROMIUM:-/usr/bin/chromium}" || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| { echo "The browser test needs Chromium: apt-get install chromium, or set ETL_TEST_CHROMIUM" >&2; exit 1; }
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; } \
		|| { echo "The alert rules' checks need promtool: apt-get install prometheus" >&2; exit 1; }
	$(BIN)/pytest

lint: install
	$(BIN)/ruff format etl_pipelines etl_pipelines_tests bench
	$(BIN)/ruff check --fix etl_pipelines etl_pipelines_tests bench

bench: install
	$(BIN)/python bench/dispatch_latency.py

clean:
	rm -rf $(VENV) .dagster_home .pytest_cache .ruff_cache
