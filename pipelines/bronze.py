"""Bronze: the raw line, where it came from and when it arrived. Nothing is parsed or dropped."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.tables import BRONZE_EVENTS, conform

SOURCE_COLUMNS = ("raw", "source_file", "kafka_topic", "kafka_partition", "kafka_offset",
                  "kafka_timestamp", "kafka_key")


def to_bronze(df: DataFrame) -> DataFrame:
    """Stamp source rows for ``bronze/events``.

    Input: ``raw`` (the line or Kafka value as text) and any of the other ``SOURCE_COLUMNS``
    (absent ones become null); ``ingest_time`` is when the line landed, as the source gives it
    (a file's modification time, a Kafka record's timestamp), else now. Output: the
    ``bronze/events`` columns. Grain: one row per delivered line or message, duplicates and
    garbage included.
    """
    now = F.col("ingest_time") if "ingest_time" in df.columns else F.current_timestamp()
    cols = {c: F.col(c) if c in df.columns else F.lit(None) for c in SOURCE_COLUMNS}
    out = df.select(*[v.alias(k) for k, v in cols.items()], now.alias("ingest_time"))
    out = out.withColumn("ingest_date", F.to_date("ingest_time"))
    return out.transform(conform(BRONZE_EVENTS))
