"""Readers. Each takes ``streaming`` so one transform chain serves stream and batch."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import KafkaSettings


def read_landing(spark: SparkSession, path: str, streaming: bool,
                 max_files_per_trigger: int | None = None) -> DataFrame:
    """JSON-lines files in the landing folder as ``raw`` text plus ``source_file`` and
    ``ingest_time``: when the file landed (its modification time), so every query that reads
    the file, and a replay, stamps a line alike.

    Lines are read as text, not JSON, so a malformed line is still a row (bronze keeps it).
    Files whose names start with ``.`` or ``_`` are skipped (they are being written).
    """
    if streaming:
        reader = spark.readStream.format("text")
        if max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
        df = reader.load(path)
    else:
        df = spark.read.format("text").load(path)
    return df.select(F.col("value").alias("raw"), F.col("_metadata.file_path").alias("source_file"),
                     F.col("_metadata.file_modification_time").alias("ingest_time"))


def read_kafka(spark: SparkSession, kafka: KafkaSettings, streaming: bool) -> DataFrame:
    """Kafka messages as ``raw`` (the value as UTF-8) plus topic, partition, offset and time;
    ``ingest_time`` is the record's timestamp (when it reached the broker, by default)."""
    reader = spark.readStream if streaming else spark.read
    reader = (reader.format("kafka")
              .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
              .option("subscribe", kafka.topic)
              .option("startingOffsets", kafka.starting_offsets)
              .option("failOnDataLoss", str(kafka.fail_on_data_loss).lower()))
    if streaming and kafka.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", kafka.max_offsets_per_trigger)
    return reader.load().select(
        F.col("value").cast("string").alias("raw"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("kafka_key"),
        F.col("timestamp").alias("ingest_time"),
    )


def read_archive(spark: SparkSession, path: str) -> DataFrame:
    """Every landing file under ``path`` (a batch read), as ``read_landing`` gives them."""
    return spark.read.format("text").option("recursiveFileLookup", "true").load(path).select(
        F.col("value").alias("raw"), F.col("_metadata.file_path").alias("source_file"),
        F.col("_metadata.file_modification_time").alias("ingest_time"))


def read_table(spark: SparkSession, path: str, streaming: bool,
               max_files_per_trigger: int | None = None) -> DataFrame:
    """A Delta table, as a batch or a stream of its appends.

    The stream skips commits that rewrite rows (``skipChangeCommits``): those are backfills,
    which rebuild the downstream tables themselves.
    """
    if not streaming:
        return spark.read.format("delta").load(path)
    reader = spark.readStream.format("delta").option("skipChangeCommits", "true")
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
    return reader.load(path)


def unread_appends(table: Path, offset: Path) -> list[str]:
    """The data files of Delta ``table`` that a ``read_table`` stream has not read yet but
    will, by the Delta source's rules, once it has read through the end offset in ``offset``
    (a checkpoint's ``offsets/<batch>`` file).

    After that offset, every commit whose data-changing actions are all adds (an append) is
    still to come; a commit that removes rows (a backfill's rewrite) is skipped
    (``skipChangeCommits``). Within the offset's own version, files after ``index`` are still
    to come (a negative index: all of them; the source's END_INDEX: none). Returns paths
    relative to ``table``, in log order.
    """
    end = json.loads(offset.read_text().splitlines()[-1])
    version, index = end["reservoirVersion"], end["index"]
    if end.get("isStartingVersion"):
        # Mid-way through its first snapshot (more than maxFilesPerTrigger files): the rest
        # of that snapshot is not a list of commits this can read. Let the stream finish it.
        raise RuntimeError(f"the stream of {offset.parent.parent} is still reading its first snapshot of "
                           f"{table} (version {version}); let it catch up first")
    log = table / "_delta_log"
    unread: list[str] = []
    while (commit := log / f"{version:020d}.json").exists():
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]
        if not any(a.get("remove", {}).get("dataChange", False) for a in actions):
            adds = [unquote(a["add"]["path"]) for a in actions if a.get("add", {}).get("dataChange", False)]
            unread += adds[index + 1:] if index >= 0 else adds  # -1, or a schema-change mark
        version, index = version + 1, -1
    return unread
