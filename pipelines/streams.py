"""The streaming queries, one per layer: reader -> pure transforms -> writer.

Each ``start_*`` function returns a started ``StreamingQuery``. With ``available_now`` the
query processes everything pending and stops; otherwise it runs on the configured trigger.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines import tables
from pipelines.bronze import to_bronze
from pipelines.config import Settings, spark_interval
from pipelines.io import sinks, sources
from pipelines.silver import dedupe, mark_late, parse, quarantined, valid_events

log = logging.getLogger(__name__)


def start_bronze(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> ``bronze/events``. Delta's streaming sink is exactly-once."""
    if s.source == "kafka":
        raw = sources.read_kafka(spark, s.kafka, streaming=True)
    else:
        raw = sources.read_landing(spark, s.input, streaming=True,
                                   max_files_per_trigger=s.stream.max_files_per_trigger)
    path = tables.ensure(spark, s.lake, tables.BRONZE_EVENTS)
    writer = sinks.stream_writer(raw.transform(to_bronze), "bronze", s.checkpoint("bronze/events"),
                                 available_now, spark_interval(s.stream.trigger_interval))
    return writer.format("delta").outputMode("append").start(path)


class SilverBatch:
    """``foreachBatch`` body for bronze -> silver: parse once, then
    - valid events: deduplicated, flagged ``late`` behind the watermark, insert-only MERGE on
      ``event_id`` (pruned to the batch's ``event_date`` partitions), so replays add nothing;
    - rejects: appended to ``silver/quarantine`` once per batch (Delta ``txnAppId``/``txnVersion``).
    """

    def __init__(self, spark: SparkSession, s: Settings):
        self.events = tables.ensure(spark, s.lake, tables.SILVER_EVENTS)
        self.quarantine = tables.ensure(spark, s.lake, tables.SILVER_QUARANTINE)
        self.checkpoint = Path(s.checkpoint("silver/events"))
        self.delay = s.stream.watermark_delay
        self.late_rows = 0

    def watermark(self, spark: SparkSession) -> datetime | None:
        latest = spark.read.format("delta").load(self.events).agg({"event_time": "max"}).first()[0]
        return latest - self.delay if latest else None

    def app_id(self) -> str:
        """The query's id, which persists in its checkpoint across restarts."""
        return "silver-quarantine-" + json.loads((self.checkpoint / "metadata").read_text())["id"]

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        parsed = batch.transform(parse).persist()
        try:
            wm = self.watermark(spark)
            events = parsed.transform(valid_events).transform(dedupe).transform(mark_late(wm))
            events = events.persist()
            dates = sinks.distinct_values(events, "event_date")
            sinks.insert_new(events, self.events, "event_id", prune={"event_date": dates})
            late = events.where("late").count() if wm else 0
            self.late_rows += late
            sinks.append_once(parsed.transform(quarantined), self.quarantine, self.app_id(), batch_id)
            events.unpersist()
            if late:
                log.info("silver batch %d: %d events behind the watermark %s", batch_id, late, wm)
        finally:
            parsed.unpersist()


def start_silver(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    bronze = tables.ensure(spark, s.lake, tables.BRONZE_EVENTS)
    stream = sources.read_table(spark, bronze, streaming=True,
                                max_files_per_trigger=s.stream.max_files_per_trigger)
    writer = sinks.stream_writer(stream, "silver", s.checkpoint("silver/events"), available_now,
                                 spark_interval(s.stream.trigger_interval))
    return writer.foreachBatch(SilverBatch(spark, s)).start()


LAYERS = {"bronze": start_bronze, "silver": start_silver}
