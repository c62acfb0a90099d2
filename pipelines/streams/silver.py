"""``silver``: the source -> parse -> dedupe (state) -> ``silver/events`` + ``silver/quarantine``,
then gold on the same rows (``streams/gold.py``). It reads the source itself rather than
bronze, so silver and gold are one hop from arrival."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines import metrics
from pipelines import tables as T
from pipelines.bronze import to_bronze
from pipelines.config import Settings
from pipelines.geo import ip_locations
from pipelines.gold.sessions import hash_keys
from pipelines.io.delta_rs import Commit, arrow_schema, max_stat, to_arrow
from pipelines.io.lease import lease
from pipelines.privacy import ip_salt
from pipelines.quality import Quality, drop_reason, dropped_to_quarantine
from pipelines.silver import dedupe_stream, event_watermark, parse, silver_and_quarantine
from pipelines.streams.base import Handler, counts, source, writer
from pipelines.streams.gold import GoldStep, epoch_ms, from_epoch_ms

log = logging.getLogger(__name__)


class SilverBatch(Handler):
    """``foreachBatch`` body for parsed, deduplicated rows -> silver and the quarantine, then
    gold (``GoldStep``) on the same collected rows.

    The watermark is ``event_watermark`` of the newest on-time event time seen, kept in gold's
    state with the batch (on a lake's first batch: silver's newest, from the files'
    statistics). Events at or before it are kept with ``late`` set. Every append is marked
    with the batch (``io/ledger.py``), so a replayed batch adds nothing and computes the same
    ``late`` marks. The whole batch holds the gold lease (``io/lease.py``): a gold backfill
    never sees silver rows gold has not applied yet.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "silver")
        self.events = T.ensure(spark, s.lake, T.SILVER_EVENTS)
        self.quarantine = T.ensure(spark, s.lake, T.SILVER_QUARANTINE)
        T.ensure(spark, s.lake, T.QUALITY_RESULTS)
        self.quality = Quality(s.lake, "silver_events", s.quality, "silver") if s.quality.enabled else None
        self.locations = ip_locations(spark, s.geo.ip_locations)
        self.ip_key = ip_salt(s.lake)
        self.gold = GoldStep(spark, s)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        with lease(self.s.lake, who=f"silver batch {batch_id}"):  # a backfill may be rebuilding gold
            self._apply(batch, batch_id)

    def _apply(self, batch: DataFrame, batch_id: int) -> None:
        app, now = self.app_id(), datetime.now(UTC)
        held, latest = self.gold.start(batch_id)
        if batch_id == 0 and self.ledger.last(self.events, app) < 0:  # rows silver held before
            latest = epoch_ms(max_stat(self.events, "event_time"))    # this query's first batch
        watermark = event_watermark(from_epoch_ms(latest), self.s.stream.watermark_delay)
        breaks = self.quality.breaks(now) if self.quality else {}
        # One Spark pass: parse, dedupe, enrich, gold's hash keys and the quality predicates,
        # collected as Arrow; the split, the counts, the checks and gold run on the collected batch.
        split = silver_and_quarantine(watermark, self.locations, self.ip_key, breaks, hash_keys())
        rows = batch.transform(split).toArrow()
        valid = pc.is_null(rows["reason"])
        events = rows.filter(valid)
        rejected = rows.filter(pc.invert(valid)).select(T.SILVER_QUARANTINE.columns)
        commit = Commit(app, batch_id, self.ledger)
        if self.quality is not None:  # the GX suite; may raise QualityFailure ("fail" policy)
            drops = self.quality.judge(self.quality.count_arrow(events, now), commit, now)
            if drops:
                reason = drop_reason(events, drops)
                rejected = pa.concat_tables([rejected.cast(arrow_schema(T.SILVER_QUARANTINE)),
                                             self._dropped(batch.sparkSession, events, reason)])
                events = events.filter(pc.is_null(reason))
        late = pc.sum(events["late"]).as_py() or 0
        if events.num_rows and commit.append(events.select(T.SILVER_EVENTS.columns), self.events,
                                             T.SILVER_EVENTS):
            metrics.ROWS.labels(T.SILVER_EVENTS.name).inc(events.num_rows)
        quarantine = rejected.select(T.SILVER_QUARANTINE.columns)
        if commit.append(quarantine, self.quarantine, T.SILVER_QUARANTINE):
            metrics.ROWS.labels(T.SILVER_QUARANTINE.name).inc(quarantine.num_rows)
            for reason, n in counts(quarantine, "reason").items():
                metrics.QUARANTINED.labels(reason).inc(n)
        metrics.LATE.inc(late)
        metrics.set_watermark("silver", watermark)
        if late:
            log.info("silver batch %d: %d events at or behind the watermark %s", batch_id, late, watermark)
        self.gold.apply(batch.sparkSession, events, batch_id, held, latest)

    @staticmethod
    def _dropped(spark: SparkSession, events: pa.Table, reason: pa.Array) -> pa.Table:
        """The events a ``drop`` check rejected, as quarantine rows (``dropped_to_quarantine``:
        rare, so a second, small Spark job)."""
        kept = pc.is_valid(reason)
        dropped = events.select(T.SILVER_EVENTS.columns).filter(kept)
        dropped = dropped.append_column("_reason", reason.filter(kept))
        return to_arrow(dropped_to_quarantine(spark.createDataFrame(dropped)), T.SILVER_QUARANTINE)


def start_silver(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> parse -> dedupe -> ``silver/events`` and the quarantine,
    then every gold table."""
    rows = (source(spark, s).transform(to_bronze).transform(parse)
            .transform(dedupe_stream(s.stream.watermark_delay)))
    return writer(rows, "silver", s, available_now).foreachBatch(SilverBatch(spark, s)).start()
