"""``bronze``: the source (landing files or Kafka) -> ``bronze/events``, every delivery."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines import metrics
from pipelines import tables as T
from pipelines.bronze import to_bronze
from pipelines.config import Settings
from pipelines.io.delta_rs import Commit, to_arrow
from pipelines.streams.base import Handler, source, writer


class BronzeBatch(Handler):
    """Every delivered line, appended once per micro-batch."""

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "bronze")
        self.path = T.ensure(spark, s.lake, T.BRONZE_EVENTS)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        rows = to_arrow(batch.transform(T.conform(T.BRONZE_EVENTS)), T.BRONZE_EVENTS)
        if Commit(self.app_id(), batch_id, self.ledger).append(rows, self.path, T.BRONZE_EVENTS):
            metrics.ROWS.labels(T.BRONZE_EVENTS.name).inc(rows.num_rows)


def start_bronze(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> ``bronze/events``."""
    rows = source(spark, s).transform(to_bronze)
    return writer(rows, "bronze", s, available_now).foreachBatch(BronzeBatch(spark, s)).start()
