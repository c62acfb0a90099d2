"""The Kafka source against a real broker (scripts/kafka.sh: Kafka 4 in KRaft mode from
Maven jars), fed by ``funnelhouse generate --to-kafka``. Counts come from the generator's
ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import SAMPLE, read
from pyspark.sql import functions as F

from pipelines.config import REPO_ROOT, load_settings
from pipelines.jobs.run import run_available_now, run_continuously

pytestmark = [pytest.mark.slow, pytest.mark.kafka]
TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())
PORT = 19092


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    """A broker of its own (not the one `make kafka-up` may have started) on PORT."""
    env = {**os.environ, "KAFKA_HOME": str(tmp_path_factory.mktemp("kafka")),
           "KAFKA_PORT": str(PORT), "KAFKA_CONTROLLER_PORT": str(PORT + 1)}

    def broker(*args: str) -> None:
        subprocess.run([str(REPO_ROOT / "scripts" / "kafka.sh"), *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker("start")
    yield broker
    broker("wipe")


def _settings(tmp_path: Path, topic: str):
    return load_settings(overrides={
        "lake": tmp_path / "lake", "source": "kafka",
        "kafka": {"bootstrap_servers": f"127.0.0.1:{PORT}", "topic": topic,
                  "max_offsets_per_trigger": 4000},
        "stream": {"trigger_interval": "1 second"}}, environ={}, local=False)


def _assert_exact(spark, s) -> None:
    silver = read(spark, s, "silver/events")
    assert silver.count() == TRUTH["valid_unique_events"]
    assert silver.select("event_id").distinct().count() == TRUTH["valid_unique_events"]
    reasons = {r["reason"]: r["count"] for r in
               read(spark, s, "silver/quarantine").groupBy("reason").count().collect()}
    assert reasons == TRUTH["malformed_by_reason"]


def test_generate_to_kafka_then_a_broker_restart_mid_run_loses_and_doubles_nothing(spark, kafka, tmp_path):
    """`generate --to-kafka` sends the sample; the job streams it continuously, 4,000 offsets
    per micro-batch; the broker stops under it and comes back while most of the topic is
    still unread; the job ends with exactly the ground truth in bronze, silver, the
    quarantine and the fraud flags."""
    topic = f"t{uuid.uuid4().hex[:8]}"
    kafka("up", topic, "3")
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "generate", "--sample", "--out", str(tmp_path / "sent"),
         "--to-kafka", f"127.0.0.1:{PORT}", "--topic", topic],
        capture_output=True, text=True, check=True)
    assert f"{TRUTH['lines']:,} messages" in out.stdout
    s = _settings(tmp_path, topic)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_continuously(spark, s, stop=stop)
        except BaseException as err:  # noqa: BLE001 - reported by the asserts below
            errors.append(err)
    stream = threading.Thread(target=run)
    stream.start()
    try:
        deadline = time.monotonic() + 180
        while not (Path(s.table("silver/events")) / "_delta_log").exists() or \
                read(spark, s, "silver/events").count() == 0:
            assert time.monotonic() < deadline and stream.is_alive(), errors
            time.sleep(0.5)
        kafka("stop")  # mid-run: the stream keeps polling a broker that is gone
        time.sleep(10)
        assert stream.is_alive(), errors
        kafka("start")
        while read(spark, s, "bronze/events").count() < TRUTH["lines"] or _pending(spark):
            assert time.monotonic() < deadline + 120 and stream.is_alive(), errors
            time.sleep(1)
    finally:
        stop.set()
        stream.join()
    run_available_now(spark, s)  # anything the continuous run left: the same checkpoints, caught up

    bronze = read(spark, s, "bronze/events")
    assert bronze.count() == TRUTH["lines"]  # duplicates and malformed lines included
    assert bronze.select("kafka_partition", "kafka_offset").distinct().count() == TRUTH["lines"]
    assert bronze.where(F.col("kafka_topic") != topic).count() == 0
    assert bronze.where(F.col("kafka_timestamp").isNull() | F.col("source_file").isNotNull()).count() == 0
    assert {r[0] for r in bronze.select("kafka_partition").distinct().collect()} == {0, 1, 2}
    # Keys are user ids: one user's events all sit in one partition.
    keyed = bronze.where(F.col("kafka_key").isNotNull())
    assert keyed.groupBy("kafka_key").agg(F.countDistinct("kafka_partition").alias("n")).where(
        "n > 1").count() == 0
    _assert_exact(spark, s)
    assert read(spark, s, "gold/fraud_flags").count() == len(TRUTH["fraud_bursts"])


def _pending(spark) -> bool:
    """True while a query still has input to process."""
    return any(q.status["isDataAvailable"] or q.status["isTriggerActive"] for q in spark.streams.active)
