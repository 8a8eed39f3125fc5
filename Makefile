PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak bench lint clean prometheus-demo

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/proconsul agent -dev

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

soak: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m soak

lint: $(STAMP)
	$(BIN)/ruff check registry ca dns connect_proxy tests bench

# Three servers and Debian's prometheus scraping their /v1/agent/metrics every second, until Ctrl-C
# (docs/operations.md, "Monitoring").
prometheus-demo: $(STAMP)
	$(BIN)/python -m tests.cluster.prometheus

bench: $(STAMP)
	$(BIN)/python -m bench.http_discovery
	$(BIN)/python -m bench.watch_fanout
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.ca
	$(BIN)/python -m bench.dns_perf
	$(BIN)/python -m bench.raft
	$(BIN)/python -m bench.proxy
	$(BIN)/python -m bench.metrics

clean:
	rm -rf $(VENV)
