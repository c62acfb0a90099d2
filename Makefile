# Funnelhouse: every target sets up what it needs (venv, jars) by itself.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
JARS    := .jars
LAKE    ?= data/lake
INPUT   ?= data/landing
SAMPLE  := data/sample
STAMP   := $(VENV)/.installed

.PHONY: setup debian-packages demo test test-fast bench bench-quality backfill lint clean clean-lake kafka-up kafka-down mlflow-ui

## setup: build the venv, fetch the jars and make the JVM's class archive; a no-op when all are there
setup: $(STAMP) $(JARS)/.fetched $(JARS)/.class-archive

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(JARS)/.fetched: build/spark-jars.pom.xml scripts/fetch-jars.sh | $(STAMP)
	scripts/fetch-jars.sh $(BIN)/python $(JARS)
	touch $@

# The driver JVM's class-data sharing archive: every JVM start ~5 s shorter. Optional: where the
# JDK cannot make one, the JVMs start without it.
$(JARS)/.class-archive: $(STAMP) $(JARS)/.fetched scripts/class-archive.py
	$(BIN)/python scripts/class-archive.py $(JARS)/spark-classes.jsa \
	  || echo "no class archive (the JVMs start without one): see the lines above"
	touch $@

## debian-packages: Prometheus and Chromium for the tests (apt-get; a no-op when installed)
debian-packages:
	scripts/debian-packages.sh

## demo: sample events -> bronze -> silver -> gold, then the summary, report and dashboard
demo: setup
	rm -rf $(LAKE) $(INPUT)
	$(BIN)/funnelhouse generate --sample --out $(INPUT)
	$(BIN)/funnelhouse run --config conf/demo.yaml --input $(INPUT) --lake $(LAKE) --available-now
	$(BIN)/funnelhouse summary --config conf/demo.yaml --lake $(LAKE)
	$(BIN)/funnelhouse dashboard --lake $(LAKE) --out data/dashboard.html
	@echo "live dashboard:  $(BIN)/funnelhouse serve --lake $(LAKE)   (http://127.0.0.1:8050/)"
	@echo "SQL, no JVM:     $(BIN)/funnelhouse sql \"SELECT * FROM gold_campaign_performance\" --lake $(LAKE)"
	@echo "metrics:         $(BIN)/funnelhouse run --input $(INPUT) --lake $(LAKE)   serves http://127.0.0.1:9108/metrics"
	@echo "anomaly model:   $(BIN)/funnelhouse train --lake $(LAKE) --truth $(INPUT).truth.json"

## test: the whole suite, slow integration tests included
test: setup debian-packages
	$(BIN)/python -m pytest

## test-fast: skip the slow integration tests (real Kafka, standalone cluster)
test-fast: setup debian-packages
	$(BIN)/python -m pytest -m "not slow"

## bench: throughput, growth, freshness, quality cost and memory (docs/performance.md)
bench: setup
	$(BIN)/python -m pipelines.bench $(BENCH_ARGS)

## bench-quality: the quality suite's cost per silver micro-batch of 100k events, beside quality off
bench-quality: setup
	$(BIN)/python -m pipelines.bench --only quality $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check pipelines tests

clean-lake:
	rm -rf $(LAKE) $(INPUT) spark-warehouse metastore_db derby.log

clean: clean-lake
	-scripts/kafka.sh wipe
	rm -rf $(VENV) $(JARS) .kafka-jars

## backfill: rebuild a date range, e.g. make backfill FROM=2026-11-02 TO=2026-11-02
backfill: setup
	$(BIN)/funnelhouse backfill --from $(FROM) --to $(TO) --lake $(LAKE)

## mlflow-ui: the MLflow UI over the lake's own store (runs, registered models, aliases)
MLFLOW_STORE ?= sqlite:///$(abspath $(LAKE))/_mlflow/mlflow.db
MLFLOW_PORT  ?= 5000
mlflow-ui: setup
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

## kafka-up: start a single-node Kafka broker (KRaft, 127.0.0.1:9092) and create TOPIC (events)
TOPIC ?= events
kafka-up:
	scripts/kafka.sh up $(TOPIC)

## kafka-down: stop the broker (its data stays in .kafka/ for the next kafka-up)
kafka-down:
	scripts/kafka.sh down
