"""Backfills: rebuild a date range of silver and gold with the functions the stream uses.

Each table's rows in the range are recomputed in batch and compared with what the table
holds; only a table whose rows differ is rewritten, with Delta ``replaceWhere`` on exactly
that range. So a second run of the same backfill changes 0 rows, and a backfill over what
the stream wrote changes only what the stream could not know (events behind its watermark).

Ranges and margins (``docs/backfill.md``):
- silver: events whose ``event_date`` is in [from, to], from bronze ingested from ``from - 1 day``;
- sessions: those that *start* in [from, to], built from silver events in [from - 1 day,
  to + 1 day] so a session crossing either edge is whole;
- campaign funnel cells with ``window_start`` in [from, to + 1 day);
- fraud flags whose burst starts in [from, to], from events with the same 1-day margins;
- campaign performance and product abandonment: rebuilt whole (one row per campaign/product);
- alerts, cart reminders, retarget offers: insert-only (what was sent stays sent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.config import Settings
from pipelines.gold import build
from pipelines.io import sinks
from pipelines.silver import dedupe, parse, valid_events
from pipelines.stateful.fraud import fraud_flags_batch

MARGIN = timedelta(days=1)


@dataclass
class Changes:
    table: str
    read: int
    written: int
    added: int
    removed: int

    @property
    def changed(self) -> int:
        return self.added + self.removed


def _lit_date(d: date) -> str:
    return f"'{d.isoformat()}'"


def replace_range(spark: SparkSession, new: DataFrame, path: str, where: str, name: str,
                  read: int = 0) -> Changes:
    """Make the rows of ``path`` matching ``where`` equal ``new`` (which must match it too).
    Rewrites only when they differ; ``created_at`` is ignored when comparing."""
    new = new.persist()
    old = spark.read.format("delta").load(path).where(where)
    cols = [c for c in new.columns if c != "created_at"]
    added = new.select(cols).exceptAll(old.select(cols)).count()
    removed = old.select(cols).exceptAll(new.select(cols)).count()
    written = new.count()
    if added or removed:
        writer = new.write.format("delta").mode("overwrite").option("replaceWhere", where)
        sinks.with_retry(lambda: writer.save(path), what=f"backfill {name}")
    new.unpersist()
    return Changes(name, read, written if added or removed else 0, added, removed)


def insert_missing(new: DataFrame, path: str, key: str, name: str) -> Changes:
    """Insert the rows of ``new`` whose ``key`` the table lacks (alerts, offers, reminders)."""
    new = new.persist()
    existing = new.sparkSession.read.format("delta").load(path).select(key)
    added = new.join(existing, key, "left_anti").count()
    if added:
        sinks.insert_new(new, path, key)
    new.unpersist()
    return Changes(name, 0, added, added, 0)


def backfill_silver(spark: SparkSession, s: Settings, start: date, end: date) -> Changes:
    """Bronze -> silver for events dated [start, end], late ones included (``late`` false)."""
    bronze = spark.read.format("delta").load(s.table(T.BRONZE_EVENTS.name)).where(
        F.col("ingest_date") >= F.lit(start - MARGIN))
    events = (bronze.transform(parse).transform(valid_events)
              .where(F.col("event_date").between(F.lit(start), F.lit(end))).transform(dedupe))
    where = f"event_date >= {_lit_date(start)} AND event_date <= {_lit_date(end)}"
    return replace_range(spark, events.transform(T.conform(T.SILVER_EVENTS)),
                         s.table(T.SILVER_EVENTS.name), where, T.SILVER_EVENTS.name, bronze.count())


def backfill_gold(spark: SparkSession, s: Settings, start: date, end: date) -> list[Changes]:
    """Silver -> every gold table for [start, end] (see the module docstring for ranges)."""
    silver = spark.read.format("delta").load(s.table(T.SILVER_EVENTS.name))
    events = silver.where(F.col("event_date").between(F.lit(start - MARGIN), F.lit(end + MARGIN))).persist()
    read = events.count()
    watermark = build.event_watermark(silver, s)
    out = []
    sessions = events.transform(build.session_rows(s)).where(
        F.col("session_date").between(F.lit(start), F.lit(end)))
    where = f"session_date >= {_lit_date(start)} AND session_date <= {_lit_date(end)}"
    out.append(replace_range(spark, sessions, s.table(T.SESSION_FUNNEL.name), where,
                             T.SESSION_FUNNEL.name, read))

    all_sessions = spark.read.format("delta").load(s.table(T.SESSION_FUNNEL.name))
    in_windows = (F.col("window_start") >= F.lit(start)) & (F.col("window_start") < F.lit(end + MARGIN))
    funnel = all_sessions.transform(build.funnel_rows(s)).where(in_windows)
    where = f"window_start >= {_lit_date(start)} AND window_start < {_lit_date(end + MARGIN)}"
    out.append(replace_range(spark, funnel, s.table(T.CAMPAIGN_FUNNEL.name), where, T.CAMPAIGN_FUNNEL.name))
    for table, rows in ((T.CAMPAIGN_PERFORMANCE, build.performance_rows(s)),
                        (T.PRODUCT_ABANDONMENT, build.product_rows(s))):
        out.append(replace_range(spark, all_sessions.transform(rows), s.table(table.name), "true",
                                 table.name))

    cells = spark.read.format("delta").load(s.table(T.CAMPAIGN_FUNNEL.name)).where(in_windows)
    out.append(insert_missing(cells.transform(build.alert_rows(s, watermark)), s.table(T.ALERTS.name),
                              "alert_id", T.ALERTS.name))
    ranged = all_sessions.where(F.col("session_date").between(F.lit(start), F.lit(end)))
    out.append(insert_missing(ranged.transform(build.reminder_rows(s, watermark)),
                              s.table(T.CART_REMINDERS.name), "reminder_id", T.CART_REMINDERS.name))
    if watermark is not None:
        sent = spark.read.format("delta").load(s.table(T.RETARGET_OFFERS.name))
        offers = build.offer_rows(events, sent, s, None, watermark).where(
            F.to_date("click_time").between(F.lit(start), F.lit(end)))
        out.append(insert_missing(offers, s.table(T.RETARGET_OFFERS.name), "offer_id",
                                  T.RETARGET_OFFERS.name))
    flags = fraud_flags_batch(events, s.fraud, watermark)
    flags = flags.where(F.to_date("first_event_time").between(F.lit(start), F.lit(end)))
    where = (f"first_event_time >= {_lit_date(start)} AND first_event_time < {_lit_date(end + MARGIN)}")
    out.append(replace_range(spark, flags, s.table(T.FRAUD_FLAGS.name), where, T.FRAUD_FLAGS.name))
    events.unpersist()
    return out


LAYERS: dict[str, Callable[..., list[Changes]]] = {
    "silver": lambda spark, s, a, b: [backfill_silver(spark, s, a, b)],
    "gold": backfill_gold,
}


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]
