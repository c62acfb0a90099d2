"""Readers. Each takes ``streaming`` so one transform chain serves stream and batch."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import KafkaSettings


def read_landing(spark: SparkSession, path: str, streaming: bool,
                 max_files_per_trigger: int | None = None, max_bytes_per_trigger: int | None = None,
                 clean_source: str = "off", archive_dir: str | None = None) -> DataFrame:
    """JSON-lines files in the landing folder as ``raw`` text plus ``source_file`` and
    ``ingest_time``: when the file landed (its modification time), so every query that reads
    the file, and a replay, stamps a line alike.

    Lines are read as text, not JSON, so a malformed line is still a row (bronze keeps it).
    Files whose names start with ``.`` or ``_`` are skipped (they are being written).

    A stream lists the whole folder every micro-batch; ``clean_source`` (``archive`` to
    ``archive_dir``, or ``delete``) has Spark move each file out once its micro-batch has
    committed, so the listing holds only the files not yet read.
    """
    if streaming:
        reader = spark.readStream.format("text")
        if max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
        elif max_bytes_per_trigger:  # at least one file a batch, however large
            reader = reader.option("maxBytesPerTrigger", int(max_bytes_per_trigger))
        if clean_source != "off":
            reader = reader.option("cleanSource", clean_source)
            if clean_source == "archive":
                reader = reader.option("sourceArchiveDir", archive_dir)
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
