"""The bronze part of the stream's micro-batch: every delivered line -> ``bronze/events``."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import SparkSession

from pipelines import metrics
from pipelines import tables as T
from pipelines.config import Settings
from pipelines.io.delta_rs import Commit
from pipelines.streams.base import Handler


class BronzeStep(Handler):
    """Every delivered line, appended once per micro-batch (marked with it: a replay adds nothing)."""

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "bronze")
        self.path = T.ensure(spark, s.lake, T.BRONZE_EVENTS)

    def apply(self, rows: pa.Table, batch_id: int) -> None:
        if Commit(self.app_id(), batch_id, self.ledger).append(rows, self.path, T.BRONZE_EVENTS):
            metrics.ROWS.labels(T.BRONZE_EVENTS.name).inc(rows.num_rows)
