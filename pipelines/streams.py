"""The streaming queries, one per layer: reader -> pure transforms -> writer.

- ``bronze``: the source (landing files or Kafka) -> ``bronze/events``, every delivery.
- ``silver``: the source -> parse -> dedupe (state) -> ``silver/events`` + ``silver/quarantine``.
  It reads the source itself rather than bronze, so silver is one hop from arrival.
- ``gold``: on-time ``silver/events`` -> the session, fraud and offer processors (state) ->
  every gold table, each micro-batch's changes committed with delta-rs.

Why this shape, with the measurements behind it: docs/performance.md. Each ``start_*``
returns a started ``StreamingQuery``; with ``available_now`` it processes everything pending
and stops, otherwise it runs on ``stream.trigger_interval``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

from pipelines import tables as T
from pipelines.bronze import to_bronze
from pipelines.config import Settings, spark_interval
from pipelines.gold import apply
from pipelines.gold.abandonment import product_counts
from pipelines.gold.build import alert_rows
from pipelines.gold.campaigns import campaign_totals
from pipelines.gold.funnel import funnel_cells
from pipelines.gold.reminders import reminder_columns
from pipelines.gold.retarget import to_offer_rows
from pipelines.gold.sessions import to_session_rows
from pipelines.io import sinks, sources
from pipelines.io.delta_rs import Commit, arrow_schema, max_stat, to_arrow
from pipelines.io.lease import lease
from pipelines.io.ledger import Ledger
from pipelines.quality import Quality, dropped_to_quarantine
from pipelines.silver import dedupe_stream, event_watermark, parse, quarantined, to_silver, valid_events
from pipelines.stateful import fraud, offers, sessions
from pipelines.stateful import gold as stateful

log = logging.getLogger(__name__)

# Each query's checkpoint, under <lake>/_checkpoints/.
CHECKPOINTS = {"bronze": "bronze/events", "silver": "silver/events", "gold": "gold"}


def query_id(checkpoint: Path) -> str:
    """A streaming query's id: written in its checkpoint, the same across restarts."""
    return json.loads((checkpoint / "metadata").read_text())["id"]


def batch_watermark(checkpoint: Path, batch_id: int) -> datetime | None:
    """The event-time watermark micro-batch ``batch_id`` ran with, from the query's offset log
    (written before the batch runs, so a replay reads the same value)."""
    lines = (checkpoint / "offsets" / str(batch_id)).read_text().splitlines()
    ms = json.loads(lines[1]).get("batchWatermarkMs", 0)
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None) if ms else None


def _source(spark: SparkSession, s: Settings) -> DataFrame:
    if s.source == "kafka":
        return sources.read_kafka(spark, s.kafka, streaming=True)
    return sources.read_landing(spark, s.input, streaming=True,
                                max_files_per_trigger=s.stream.max_files_per_trigger)


def _writer(df: DataFrame, name: str, s: Settings, available_now: bool) -> DataStreamWriter:
    """The writer of the query ``name``, with its checkpoint and trigger."""
    return sinks.stream_writer(df, name, s.checkpoint(CHECKPOINTS[name]), available_now,
                               spark_interval(s.stream.trigger_interval))


class Handler:
    """What a ``foreachBatch`` body knows: its query's checkpoint (for the app id, stable
    across restarts) and the ledger of batches each table holds (rebuilt from the tables
    after a restart)."""

    def __init__(self, s: Settings, name: str):
        self.s = s
        self.checkpoint = Path(s.checkpoint(CHECKPOINTS[name]))
        self.name = name
        self.ledger = Ledger()

    def app_id(self) -> str:
        return f"{self.name}-{query_id(self.checkpoint)}"


class BronzeBatch(Handler):
    """Every delivered line, appended once per micro-batch."""

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "bronze")
        self.path = T.ensure(spark, s.lake, T.BRONZE_EVENTS)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        sinks.append_batch(batch, self.path, self.app_id(), batch_id, self.ledger)


def start_bronze(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> ``bronze/events``."""
    rows = _source(spark, s).transform(to_bronze)
    return _writer(rows, "bronze", s, available_now).foreachBatch(BronzeBatch(spark, s)).start()


class SilverBatch(Handler):
    """``foreachBatch`` body for parsed, deduplicated rows -> silver and the quarantine.

    The watermark is ``event_watermark`` of the newest on-time event time in silver: read
    from the table when the query starts, then advanced by each batch this process writes.
    Events at or before it are kept with ``late`` set. Both appends are marked with the batch
    (``io/ledger.py``), so a replayed batch adds nothing.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "silver")
        self.events = T.ensure(spark, s.lake, T.SILVER_EVENTS)
        self.quarantine = T.ensure(spark, s.lake, T.SILVER_QUARANTINE)
        T.ensure(spark, s.lake, T.QUALITY_RESULTS)
        self.quality = Quality(s.lake, "silver_events", s.quality, "silver") if s.quality.enabled else None
        self._latest: datetime | None = None
        self._known = False

    def latest(self, spark: SparkSession) -> datetime | None:
        """The newest on-time event time silver holds (after a (re)start: the files' statistics,
        no scan; a late event is older than some on-time one, so the newest of all is on time)."""
        if not self._known:
            self._latest = max_stat(self.events, "event_time")
            self._known = True
        return self._latest

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark, app, now = batch.sparkSession, self.app_id(), datetime.now(UTC)
        watermark = event_watermark(self.latest(spark), self.s.stream.watermark_delay)
        parsed = batch.persist()
        try:
            events = parsed.transform(valid_events).transform(to_silver(watermark))
            rejected = parsed.transform(quarantined)
            checks = self.quality.counts(now) if self.quality else []
            stats = events.agg(F.count(F.lit(1)).alias("_rows"), F.count_if("late").alias("_late"),
                               F.max(F.when(~F.col("late"), F.col("event_time"))).alias("_latest"),
                               *checks).first()
            if self.quality is not None:  # the GX suite; may raise QualityFailure ("fail" policy)
                events, dropped = self.quality.apply(events, Commit(app, batch_id, self.ledger), stats, now)
                if dropped is not None:
                    rejected = rejected.unionByName(dropped_to_quarantine(dropped))
            if stats["_rows"]:
                self._append_events(events, app, batch_id, stats["_latest"])
            if not rejected.isEmpty():
                sinks.append_batch(rejected, self.quarantine, app, batch_id, self.ledger)
            if stats["_late"]:
                log.info("silver batch %d: %d events at or behind the watermark %s", batch_id,
                         stats["_late"], watermark)
        finally:
            parsed.unpersist()

    def _append_events(self, events: DataFrame, app: str, batch_id: int, latest: datetime | None) -> None:
        if sinks.append_batch(events, self.events, app, batch_id, self.ledger):
            if latest is not None and (self._latest is None or latest > self._latest):
                self._latest = latest
        else:
            self._known = False  # a replay: the table knows better than this process


def start_silver(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> parse -> dedupe -> ``silver/events`` and the quarantine."""
    rows = (_source(spark, s).transform(to_bronze).transform(parse)
            .transform(dedupe_stream(s.stream.watermark_delay)))
    return _writer(rows, "silver", s, available_now).foreachBatch(SilverBatch(spark, s)).start()


class GoldBatch(Handler):
    """``foreachBatch`` body for the gold processors' changes -> every gold table.

    Sessions first (the freshest table), then the aggregates their signed rows change, then
    the windows this batch's watermark closed (judged for drop-off alerts), then reminders,
    fraud flags and offers. Each table gets one delta-rs commit marked with the batch, or none
    when nothing in it changed. The batch's watermark comes from the query's offset log, so a
    restarted job judges exactly what an uninterrupted one would.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "gold")
        self.paths = {t.name: T.ensure(spark, s.lake, t) for t in T.GOLD}
        T.ensure(spark, s.lake, T.QUALITY_RESULTS)
        self.quality = Quality(s.lake, "campaign_funnel", s.quality, "gold") if s.quality.enabled else None

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        with lease(self.s.lake, who=f"gold batch {batch_id}"):  # a backfill may be rebuilding
            self._apply(batch, batch_id)

    def _apply(self, batch: DataFrame, batch_id: int) -> None:
        s, commit = self.s, Commit(self.app_id(), batch_id, self.ledger)
        changes = batch.persist()
        try:
            kinds = {r["kind"]: r["count"] for r in changes.groupBy("kind").count().collect()}
            if kinds.get("session") or kinds.get("closed"):
                self._sessions(commit, changes, bool(kinds.get("session")))
            watermark = batch_watermark(self.checkpoint, batch_id)
            if watermark is not None:
                self._close_windows(commit, changes.sparkSession, watermark)
            for kind, table, rows in (
                    ("reminder", T.CART_REMINDERS, lambda df: df.transform(
                        to_session_rows(s.sessions.gap, None)).select(*reminder_columns())),
                    ("flag", T.FRAUD_FLAGS, lambda df: df),
                    ("offer", T.RETARGET_OFFERS, lambda df: df.transform(to_offer_rows()))):
                if kinds.get(kind):
                    new = changes.where(F.col("kind") == kind).transform(rows).transform(T.conform(table))
                    apply.insert_new(commit, to_arrow(new, table), self.paths[table.name], table)
        finally:
            changes.unpersist()

    def _sessions(self, commit: Commit, changes: DataFrame, signed: bool) -> None:
        s, p = self.s, self.paths
        rows = (changes.where(F.col("kind").isin("session", "closed"))
                .transform(to_session_rows(s.sessions.gap, None)))
        columns = [*T.SESSION_FUNNEL.columns, "kind", "sign"]
        apply.sessions(commit, rows.select(*columns).toArrow(), p[T.SESSION_FUNNEL.name])
        if not signed:
            return
        signed_rows = rows.where(F.col("kind") == "session")
        cells = signed_rows.transform(funnel_cells(s.funnel.window)).withColumns({
            "closed": F.lit(False), "window_date": F.to_date("window_start")})
        apply.cells(commit, cells.toArrow(), p[T.CAMPAIGN_FUNNEL.name])
        apply.campaign_performance(commit, signed_rows.transform(campaign_totals()).toArrow(),
                                   p[T.CAMPAIGN_PERFORMANCE.name])
        apply.products(commit, signed_rows.transform(product_counts()).toArrow(),
                       p[T.PRODUCT_ABANDONMENT.name])

    def _close_windows(self, commit: Commit, spark: SparkSession, watermark: datetime) -> None:
        """Check and judge the windows this watermark closed, then mark them closed."""
        path = self.paths[T.CAMPAIGN_FUNNEL.name]
        closing = apply.closing_cells(path, watermark, self.s.sessions.gap)
        if closing.num_rows == 0:
            return
        cells = spark.createDataFrame(closing.cast(arrow_schema(T.CAMPAIGN_FUNNEL)))
        if self.quality is not None:  # the funnel suite, on each window as it closes
            self.quality.apply(cells, commit)
        alerts = cells.transform(alert_rows(self.s, watermark))
        apply.insert_new(commit, to_arrow(alerts, T.ALERTS), self.paths[T.ALERTS.name], T.ALERTS)
        apply.mark_closed(commit, closing, path)


def gold_changes(events: DataFrame, s: Settings) -> DataFrame:
    """On-time silver events -> the processors' changes, one stream: signed and closed
    sessions, reminders, fraud flags and offers, told apart by ``kind``."""
    watermarked = events.where(~F.col("late")).withWatermark(
        "event_time", spark_interval(s.stream.watermark_delay))
    return stateful.run(watermarked, [sessions.processor(s), fraud.processor(s.fraud),
                                      offers.processor(s.retarget)])


def start_gold(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """``silver/events`` -> every gold table. Silver's commits are read whole (no
    ``maxFilesPerTrigger``), so this query's watermark never passes an event silver kept as
    on time."""
    path = T.ensure(spark, s.lake, T.SILVER_EVENTS)
    events = sources.read_table(spark, path, streaming=True)
    return _writer(gold_changes(events, s), "gold", s, available_now).foreachBatch(
        GoldBatch(spark, s)).start()


LAYERS = {"bronze": start_bronze, "silver": start_silver, "gold": start_gold}
