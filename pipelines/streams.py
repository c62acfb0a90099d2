"""The streaming queries, one per layer: reader -> pure transforms -> writer.

Each ``start_*`` function returns a started ``StreamingQuery``. With ``available_now`` the
query processes everything pending and stops; otherwise it runs on the configured trigger.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

from pipelines import tables
from pipelines.bronze import to_bronze
from pipelines.config import Settings, spark_interval
from pipelines.gold import build
from pipelines.io import sinks, sources
from pipelines.io.lease import lease
from pipelines.quality import Quality, dropped_to_quarantine
from pipelines.silver import dedupe, mark_late, parse, quarantined, valid_events
from pipelines.stateful.fraud import fraud_flags_stream

log = logging.getLogger(__name__)


def start_bronze(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Landing files (or Kafka) -> ``bronze/events``. Delta's streaming sink is exactly-once."""
    if s.source == "kafka":
        raw = sources.read_kafka(spark, s.kafka, streaming=True)
    else:
        raw = sources.read_landing(spark, s.input, streaming=True,
                                   max_files_per_trigger=s.stream.max_files_per_trigger)
    path = tables.ensure(spark, s.lake, tables.BRONZE_EVENTS)
    writer = _writer(raw.transform(to_bronze), "bronze", s, available_now)
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
        self.checkpoint = Path(s.checkpoint(CHECKPOINTS["silver"]))
        self.delay = s.stream.watermark_delay
        self.late_rows = 0
        self.quality = (Quality(spark, s.lake, "silver_events", s.quality, "silver")
                        if s.quality.enabled else None)

    def watermark(self, spark: SparkSession) -> datetime | None:
        latest = spark.read.format("delta").load(self.events).agg({"event_time": "max"}).first()[0]
        return latest - self.delay if latest else None

    def app_id(self) -> str:
        """The query's id, which persists in its checkpoint across restarts."""
        return "silver-quarantine-" + query_id(self.checkpoint)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        parsed = batch.transform(parse).persist()
        wm = self.watermark(spark)
        checked = parsed.transform(valid_events).transform(dedupe).transform(mark_late(wm)).persist()
        try:
            events, quarantine = checked, parsed.transform(quarantined)
            if self.quality is not None:  # GX suite; may raise QualityFailure ("fail" policy)
                events, dropped = self.quality.apply(checked, batch_id, self.app_id())
                if dropped is not None:
                    quarantine = quarantine.unionByName(dropped_to_quarantine(dropped))
            dates = sinks.distinct_values(events, "event_date")
            sinks.insert_new(events, self.events, "event_id", prune={"event_date": dates})
            late = events.where("late").count() if wm else 0
            self.late_rows += late
            sinks.append_once(quarantine, self.quarantine, self.app_id(), batch_id)
            if late:
                log.info("silver batch %d: %d events behind the watermark %s", batch_id, late, wm)
        finally:  # a QualityFailure included
            checked.unpersist()
            parsed.unpersist()


def query_id(checkpoint: Path) -> str:
    """A streaming query's id: written in its checkpoint, the same across restarts."""
    return json.loads((checkpoint / "metadata").read_text())["id"]


# Each query's checkpoint, under <lake>/_checkpoints/.
CHECKPOINTS = {"bronze": "bronze/events", "silver": "silver/events", "gold": "gold/funnel",
               "fraud": "gold/fraud_flags"}


def _stream_of(spark: SparkSession, s: Settings, table: tables.Table) -> DataFrame:
    """The appends to an upstream lake table, as a stream (created first if absent)."""
    path = tables.ensure(spark, s.lake, table)
    return sources.read_table(spark, path, streaming=True,
                              max_files_per_trigger=s.stream.max_files_per_trigger)


def _writer(df: DataFrame, name: str, s: Settings, available_now: bool) -> DataStreamWriter:
    """The writer of the query ``name``, with its checkpoint and trigger."""
    return sinks.stream_writer(df, name, s.checkpoint(CHECKPOINTS[name]), available_now,
                               spark_interval(s.stream.trigger_interval))


def start_silver(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    stream = _stream_of(spark, s, tables.BRONZE_EVENTS)
    writer = _writer(stream, "silver", s, available_now)
    return writer.foreachBatch(SilverBatch(spark, s)).start()




class GoldBatch:
    """``foreachBatch`` body for silver -> gold. Each micro-batch recomputes only what its
    events touch, with the same functions a batch build uses:

    1. the sessions of every ``tracking_id`` in the batch, from all of silver (on-time rows),
       replace that journey's rows in ``gold/session_funnel`` (a late-arriving event can
       split, merge or extend a session, so a journey is rebuilt whole);
    2. the (campaign, window) cells those sessions fall in, in ``gold/campaign_funnel``;
    3. ``gold/campaign_performance`` and ``gold/product_abandonment`` (small: rebuilt whole);
    4. drop-off rules, once the watermark closes more windows -> insert-only ``gold/alerts``;
    5. cart reminders for sessions the watermark has closed -> insert-only ``gold/cart_reminders``;
    6. retargeting offers due by the watermark -> insert-only ``gold/retarget_offers``.

    Every step is a MERGE or an overwrite of a deterministic result, so a replayed batch
    changes nothing. Rows flagged ``late`` by silver are skipped and counted.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        self.s = s
        self.silver = tables.ensure(spark, s.lake, tables.SILVER_EVENTS)
        self.paths = {t.name: tables.ensure(spark, s.lake, t) for t in tables.GOLD}
        self.late_rows_skipped = 0
        self._judged_until: datetime | None = None  # windows closed by this time were judged
        self._offered_until: datetime | None = None  # offers due by this time were made
        self._watermark: datetime | None = None
        self._last_batch_wall = time.time()
        self._offer_lock = threading.Lock()
        self.checkpoint = Path(s.checkpoint(CHECKPOINTS["gold"]))
        self._own_id = uuid.uuid4().hex  # when called directly, outside a started query
        self.quality = (Quality(spark, s.lake, "campaign_funnel", s.quality, "gold")
                        if s.quality.enabled else None)

    def _read(self, spark: SparkSession, table: tables.Table) -> DataFrame:
        return spark.read.format("delta").load(self.paths[table.name])

    def _app_id(self) -> str:
        """The gold query's id (from its checkpoint), or an id of this handler's own when it is
        called directly (a test, a notebook) and no query has started."""
        started = (self.checkpoint / "metadata").exists()
        return "gold-" + (query_id(self.checkpoint) if started else self._own_id)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        with lease(self.s.lake, who=f"gold batch {batch_id}"):  # a backfill may be rebuilding
            self._batch(batch, batch_id)

    def _batch(self, batch: DataFrame, batch_id: int) -> None:
        spark, s = batch.sparkSession, self.s
        keys = batch.select("tracking_id", "late").persist()  # the micro-batch is scanned once
        late = keys.where(F.col("late")).count()
        self.late_rows_skipped += late
        journeys = keys.where(~F.col("late")).select("tracking_id").distinct().persist()
        silver = spark.read.format("delta").load(self.silver)
        watermark = self._watermark = build.event_watermark(silver, s)
        if journeys.count():
            sessions = self._sessions_and_funnel(spark, journeys, batch_id)
            sinks.overwrite(sessions.transform(build.performance_rows(s)),
                            self.paths[tables.CAMPAIGN_PERFORMANCE.name])
            sinks.overwrite(sessions.transform(build.product_rows(s)),
                            self.paths[tables.PRODUCT_ABANDONMENT.name])
            sessions.unpersist()
        journeys.unpersist()
        keys.unpersist()
        self._alerts(spark, watermark)
        self._reminders(spark, watermark)
        self._offers(spark, watermark)
        self._last_batch_wall = time.time()
        if late:
            log.info("gold batch %d: skipped %d late events", batch_id, late)

    def tick(self, spark: SparkSession, now: float | None = None) -> None:
        """Quiet-input fallback, called by the continuous job between batches: when no gold
        batch has run for a trigger interval, event time is taken to advance with the wall
        clock from the last watermark, and the offers due by then go out."""
        now = time.time() if now is None else now
        quiet = now - self._last_batch_wall
        if self._watermark is None or quiet < self.s.stream.trigger_interval.total_seconds():
            return
        with lease(self.s.lake, who="gold tick"):
            self._offers(spark, self._watermark + timedelta(seconds=quiet))

    def _offers(self, spark: SparkSession, clock: datetime | None) -> None:
        """Retargeting offers due in (last clock, clock]: the event-time timer of the rule.
        Insert-only by offer id; the cooldown reads the offers already sent."""
        with self._offer_lock:
            if clock is None or (self._offered_until and clock <= self._offered_until):
                return
            after, wait = self._offered_until, self.s.retarget.wait
            events = spark.read.format("delta").load(self.silver).where(~F.col("late"))
            if after is not None:
                events = events.where((F.col("event_time") > F.lit(after - wait))
                                      & (F.col("event_date") >= F.lit((after - wait).date())))
            events = events.where(F.col("event_time") <= F.lit(clock))
            sent = self._read(spark, tables.RETARGET_OFFERS)
            new = build.offer_rows(events, sent, self.s, after, clock)
            sinks.insert_new(new, self.paths[tables.RETARGET_OFFERS.name], "offer_id")
            self._offered_until = clock

    def _reminders(self, spark: SparkSession, watermark: datetime | None) -> None:
        """Cart reminders for sessions the watermark has closed; insert-only by session."""
        if watermark is None:
            return
        reminders = self._read(spark, tables.SESSION_FUNNEL).where(
            F.col("adds") >= self.s.reminders.min_adds).transform(build.reminder_rows(self.s, watermark))
        sinks.insert_new(reminders, self.paths[tables.CART_REMINDERS.name], "reminder_id")

    def _alerts(self, spark: SparkSession, watermark: datetime | None) -> None:
        """Judge the windows that closed since the last time (closed windows never change:
        what could change them is behind the watermark, so skipped)."""
        if watermark is None or (self._judged_until and self._closed(watermark) <= self._judged_until):
            return
        alerts = self._read(spark, tables.CAMPAIGN_FUNNEL).transform(build.alert_rows(self.s, watermark))
        sinks.insert_new(alerts, self.paths[tables.ALERTS.name], "alert_id")
        self._judged_until = self._closed(watermark)

    def _closed(self, watermark: datetime) -> datetime:
        """The end of the last window the watermark has closed."""
        window = self.s.funnel.window
        edge = watermark - self.s.sessions.gap
        return edge - (edge - datetime(1970, 1, 1, tzinfo=edge.tzinfo)) % window

    def _sessions_and_funnel(self, spark: SparkSession, journeys: DataFrame, batch_id: int) -> DataFrame:
        """Steps 1 and 2; returns all sessions after the update, persisted."""
        s = self.s
        silver = spark.read.format("delta").load(self.silver).where(~F.col("late"))
        events = silver.join(F.broadcast(journeys), "tracking_id", "left_semi")
        new = events.transform(build.session_rows(s)).persist()
        old = self._read(spark, tables.SESSION_FUNNEL).join(
            F.broadcast(journeys), "tracking_id", "left_semi").persist()
        old.count()  # pin the rows as they are before the MERGE
        sinks.replace_rows(new, old, self.paths[tables.SESSION_FUNNEL.name], ["session_id"])

        cells = (new.select("campaign_id", "session_start").unionByName(
                    old.select("campaign_id", "session_start"))
                 .where(F.col("campaign_id").isNotNull())
                 .select("campaign_id", build.window_of("session_start", s).alias("window_start"))
                 .distinct().persist())
        sessions = self._read(spark, tables.SESSION_FUNNEL).persist()
        in_cells = (sessions.withColumn("window_start", build.window_of("session_start", s))
                    .join(F.broadcast(cells), ["campaign_id", "window_start"], "left_semi")
                    .drop("window_start"))
        funnel_old = self._read(spark, tables.CAMPAIGN_FUNNEL).join(
            F.broadcast(cells), ["campaign_id", "window_start"], "left_semi").persist()
        funnel_old.count()
        funnel = in_cells.transform(build.funnel_rows(s)).persist()
        if self.quality is not None:  # batch-level checks: warn or fail
            self.quality.validate(funnel, batch_id, self._app_id())
        sinks.replace_rows(funnel, funnel_old,
                           self.paths[tables.CAMPAIGN_FUNNEL.name], ["campaign_id", "window_start"])
        for df in (new, old, cells, funnel_old, funnel):
            df.unpersist()
        return sessions


def start_gold(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    writer = _writer(_stream_of(spark, s, tables.SILVER_EVENTS), "gold", s, available_now)
    handler = GoldBatch(spark, s)
    query = writer.foreachBatch(handler).start()
    query.tick = lambda: handler.tick(spark)  # the continuous job's quiet-input fallback
    return query


def start_fraud(spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Silver -> ``gold/fraud_flags``: the stateful velocity rules (see ``stateful/fraud.py``).
    Flags are inserted by ``flag_id`` (insert-only MERGE): a replayed batch, or a flag a
    backfill already wrote, adds nothing."""
    path = tables.ensure(spark, s.lake, tables.FRAUD_FLAGS)
    events = _stream_of(spark, s, tables.SILVER_EVENTS).where(~F.col("late"))
    flags = fraud_flags_stream(events, s.fraud, spark_interval(s.stream.watermark_delay))
    writer = _writer(flags, "fraud", s, available_now).outputMode("append")
    return writer.foreachBatch(lambda batch, _: _insert_flags(batch, path)).start()


def _insert_flags(batch: DataFrame, path: str) -> None:
    """Most fraud batches close no burst: skip their MERGE (and its commit). The batch is
    cached so the stateful plan runs once, not once per MERGE pass."""
    batch = batch.persist()
    try:
        if not batch.isEmpty():
            sinks.insert_new(batch, path, "flag_id")
    finally:
        batch.unpersist()


LAYERS = {"bronze": start_bronze, "silver": start_silver, "gold": start_gold, "fraud": start_fraud}
