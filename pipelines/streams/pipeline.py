"""``pipeline``: the one streaming query. The source (landing files or Kafka) is read once;
each micro-batch is parsed and collected in one Spark pass, then enriched and written by the
driver: every delivery to ``bronze/events`` (``streams/bronze.py``), the deduplicated events
and the rejects to ``silver/events`` and ``silver/quarantine`` (``streams/silver.py``), and
gold from those same events (``streams/gold.py``). So every table is one hop from arrival.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines import tables as T
from pipelines.bronze import to_bronze
from pipelines.common import from_epoch_ms
from pipelines.config import Settings
from pipelines.io.lease import lease
from pipelines.silver import BRONZE, event_watermark
from pipelines.streams.base import QUERY, source, writer
from pipelines.streams.bronze import BronzeStep
from pipelines.streams.gold import GoldStep
from pipelines.streams.silver import SilverStep


class PipelineBatch:
    """``foreachBatch`` body: one micro-batch of source rows -> bronze, silver, gold.

    Its state is in the query's checkpoint, one file per micro-batch: silver's ids within the
    dedupe window (``stateful/dedupe.py``) and gold's processors with the newest on-time
    event time seen (``stateful/state_files.py``), from which the batch's watermark comes. A replayed
    batch therefore computes what it computed the first time, and each table's ledger skips
    the writes it already made. The whole batch holds the gold lease (``io/lease.py``), so a
    gold backfill sees silver exactly as gold has applied it. Bronze's and silver's appends
    run on a writer thread while gold computes; the batch returns once they have landed.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        self.s = s
        self.bronze = BronzeStep(spark, s)
        self.silver = SilverStep(spark, s)
        self.gold = GoldStep(spark, s)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="append")  # bronze, then silver

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        with lease(self.s.lake, who=f"batch {batch_id}"):  # a backfill may be rebuilding gold
            self._apply(batch, batch_id)

    def _apply(self, batch: DataFrame, batch_id: int) -> None:
        spark, now = batch.sparkSession, datetime.now(UTC)
        held, latest = self.gold.start(batch_id)
        latest = latest if latest is not None else self.silver.first_latest(batch_id)
        watermark = event_watermark(from_epoch_ms(latest), self.s.stream.watermark_delay)
        # One Spark pass: bronze's row, parsed, with gold's hash keys and the quality
        # predicates (the query's projection, the same every micro-batch), collected as
        # Arrow; everything after, the late marks too, runs on the collected batch.
        rows = batch.toArrow()
        # Bronze's and silver's appends run on the writer thread, beside silver's and gold's
        # work on the driver (delta-rs writes without the GIL; nothing in the batch reads them
        # back); the batch ends when they have, as a crash's replay expects.
        appends = [self.writer.submit(self.bronze.apply, _unnested(rows[BRONZE]), batch_id)]
        try:
            events, append_silver = self.silver.apply(spark, rows.drop_columns([BRONZE]), batch_id,
                                                      watermark, now)
            appends.append(self.writer.submit(append_silver))
            self.gold.apply(events, batch_id, held, latest)
        finally:
            wait(appends)
        for done in appends:
            done.result()  # a failed append fails the batch


def _unnested(column: pa.ChunkedArray) -> pa.Table:
    """The bronze rows of the struct column ``BRONZE``, without copying them (an empty batch
    has no chunk, which ``from_struct_array`` needs one of)."""
    return pa.Table.from_struct_array(column if column.num_chunks else column.combine_chunks())


def start_pipeline(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> the projection (built once) -> bronze, silver and gold,
    one micro-batch at a time."""
    T.ensure(spark, s.lake, T.BRONZE_EVENTS)
    handler = PipelineBatch(spark, s)
    rows = source(spark, s).transform(to_bronze).transform(handler.silver.projection())
    return writer(rows, QUERY, s, available_now).foreachBatch(handler).start()
