"""The one SparkSession factory. Jobs, notebooks and the test fixture all call ``build_spark``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.config import REPO_ROOT, SparkSettings

JARS_DIR = Path(os.environ.get("FUNNELHOUSE_JARS", REPO_ROOT / ".jars"))
# The driver JVM's class-data sharing archive (AppCDS), made by ``make setup``
# (scripts/class-archive.py): the classes a run loads, parsed and verified once. It halves a
# JVM's start (session and first job: 11.7 s -> 6.3 s here, docs/performance.md). The JVM
# checks it against its own build and the classpath; a stale one is skipped, with a warning.
CLASS_ARCHIVE = JARS_DIR / "spark-classes.jsa"

BASE_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    # -XX:-DontCompileHugeMethods: HotSpot never JIT-compiles a method over 8,000 bytes of
    # bytecode, and whole-stage codegen of silver's projection (parse, contract checks, IP
    # location and hash) makes one; interpreted, it cost 14 s per 1M events (docs/performance.md).
    # -XX:+UseParallelGC: on 2 cores the throughput collector beat the default G1 on 1M events
    # end to end (59.0-62.5 s against 61.5-66.0 s) and kept the JVM's peak at 3.4 GiB, not 4.5.
    "spark.driver.extraJavaOptions":
        f"-Duser.timezone=UTC -XX:-DontCompileHugeMethods -XX:+UseParallelGC "
        f"-Dlog4j2.configurationFile={REPO_ROOT / 'conf' / 'log4j2.properties'}",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC -XX:-DontCompileHugeMethods -XX:+UseParallelGC",
    "spark.sql.streaming.stateStore.providerClass":
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
    "spark.sql.streaming.stopGracefullyOnShutdown": "true",
    # No micro-batch without input: the stream's state (dedupe window, gold's timers) moves
    # only with input. An empty batch cost silver about 1.3 s.
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
    # A landing-folder micro-batch names its files, and Spark reads their status in a
    # distributed job when there are more than this many (default 32): 1.1-1.6 s of each
    # silver batch (and bronze's, when its batches are large) under a feed that lands five
    # files a second. On the driver it takes milliseconds (docs/performance.md).
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1024",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.databricks.delta.optimizeMetadataQuery.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}


def class_archive(jvm_options: str = "", archive: Path = CLASS_ARCHIVE) -> str:
    """The option that maps the class archive into the driver JVM, when there is one (and
    ``jvm_options`` does not name an archive itself, as the run that makes it does)."""
    if "Archive" in jvm_options or not archive.is_file():
        return ""
    return f"-XX:SharedArchiveFile={archive}"


def jar_paths(jars_dir: Path = JARS_DIR) -> list[str]:
    """The Delta and Kafka jars fetched by ``make setup``; a clear error when they are missing."""
    jars = sorted(str(p) for p in jars_dir.glob("*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise RuntimeError(
            f"Delta jars not found in {jars_dir}. Run `make setup` (it fetches them with mvn),"
            " or point FUNNELHOUSE_JARS at a folder that holds them."
        )
    return jars


def build_spark(settings: SparkSettings | None = None, **overrides: str) -> SparkSession:
    """Build (or return the running) SparkSession with Delta, the jars, RocksDB state and UTC.

    ``overrides`` are extra Spark conf entries; they win over ``settings.conf``.
    """
    settings = settings or SparkSettings()
    # PySpark turns timestamps into naive datetimes in the Python process's zone: make it UTC,
    # like the session, so watermarks and window edges computed in Python agree with Spark.
    os.environ["TZ"] = "UTC"
    time.tzset()
    # Python workers must run the same interpreter as the driver (pyarrow, pandas live there).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = {
        **BASE_CONF,
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.ui.enabled": str(settings.ui).lower(),
        "spark.driver.memory": settings.driver_memory,
        "spark.driver.extraJavaOptions": " ".join(filter(None, (
            BASE_CONF["spark.driver.extraJavaOptions"], class_archive(settings.jvm_options),
            settings.jvm_options))),
        **settings.conf,
        **overrides,
    }
    builder = SparkSession.builder.appName(settings.app_name)
    if not _submitted():
        builder = builder.master(settings.master)
        conf["spark.jars"] = ",".join(jar_paths())
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _submitted() -> bool:
    """True under spark-submit: the JVM is up already, with the master and jars it was given."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
