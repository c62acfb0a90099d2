"""Sessions and the six-step funnel.

A session is the events of one ``tracking_id`` with no gap longer than ``gap``. Its funnel
level is the length of the longest prefix of steps 1..6 that occurs in time order (other
events may come in between; equal timestamps are ordered by step index): ClickHouse's
``windowFunnel`` with the session as the window.
"""

from __future__ import annotations

from datetime import timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.common import Transform, require_columns
from pipelines.config import spark_interval
from pipelines.contract import AD_STEPS, STEPS

SESSION_INPUT = ("event_id", "event_type", "step", "event_time", "user_id", "tracking_id",
                 "campaign_id", "product_id", "price", "quantity")


def _level_and_times(ordered: Column) -> Column:
    """Walk (event_time, step) pairs in order; return struct(level, reached) where
    ``reached[k]`` is when step k+1 was reached."""
    start = F.struct(F.lit(0).alias("level"), F.array().cast("array<timestamp>").alias("reached"))
    return F.aggregate(ordered, start, lambda acc, x: F.when(
        x["step"] == acc["level"] + 1,
        F.struct((acc["level"] + 1).alias("level"),
                 F.array_append(acc["reached"], x["event_time"]).alias("reached")),
    ).otherwise(acc))


def _touch(attribution: str) -> Column:
    """The campaign of the first (or last) ad event that names one."""
    is_ad = F.col("event_type").isin(*AD_STEPS) & F.col("campaign_id").isNotNull()
    pick = F.min_by if attribution == "first_touch" else F.max_by
    return pick("campaign_id", F.when(is_ad, F.struct("event_time", "step")))


def assign_sessions(gap: timedelta) -> Transform:
    """Add ``session_start`` to each event: a new session starts after more than ``gap``
    without events of the same ``tracking_id``. Grain unchanged."""
    def _(events: DataFrame) -> DataFrame:
        by_journey = Window.partitionBy("tracking_id").orderBy("event_time", "step", "event_id")
        prev = F.lag("event_time").over(by_journey)
        new = (prev.isNull() | (F.col("event_time") - prev > F.expr(
            f"INTERVAL {int(gap.total_seconds())} SECONDS"))).cast("int")
        seq = F.sum("_new").over(by_journey.rowsBetween(Window.unboundedPreceding, 0))
        with_seq = events.withColumn("_new", new).withColumn("_seq", seq)
        start = F.min("event_time").over(Window.partitionBy("tracking_id", "_seq"))
        return with_seq.withColumn("session_start", start).drop("_new", "_seq")
    return _


def sessionize(gap: timedelta, attribution: str = "first_touch") -> Transform:
    """Silver events -> ``gold/session_funnel`` rows, one per session.

    Input: ``SESSION_INPUT`` columns. Output: session keys, first/last touch campaign,
    ``funnel_level`` (0-6), ``seconds_to_<step>`` for each step reached after the first,
    clicks, adds, purchases (purchase events), items, revenue and the products added and bought.
    """
    def _(events: DataFrame) -> DataFrame:
        require_columns(events, *SESSION_INPUT)
        ordered = F.array_sort(F.collect_list(F.struct("event_time", "step")))
        is_purchase = F.col("event_type") == "purchase"
        line_value = F.coalesce(F.col("price"), F.lit(0.0)) * F.coalesce(F.col("quantity"), F.lit(1))
        sessions = events.transform(assign_sessions(gap)).groupBy("tracking_id", "session_start").agg(
            F.max("event_time").alias("session_end"),
            F.min_by("user_id", F.struct("event_time", "step")).alias("user_id"),
            _touch(attribution).alias("campaign_id"),
            _level_and_times(ordered).alias("_walk"),
            F.count("*").alias("event_count"),
            F.count_if(F.col("event_type") == "ad_click").alias("clicks"),
            F.count_if(F.col("event_type") == "add_to_cart").alias("adds"),
            F.count_if(is_purchase).alias("purchases"),
            F.sum(F.when(is_purchase, F.col("quantity"))).alias("items"),
            F.sum(F.when(is_purchase, line_value)).alias("revenue"),
            F.array_sort(F.collect_set(F.when(F.col("event_type") == "add_to_cart",
                                              F.col("product_id")))).alias("added_products"),
            F.array_sort(F.collect_set(F.when(is_purchase, F.col("product_id")))).alias(
                "purchased_products"),
        )
        reached = F.col("_walk.reached")
        seconds_to = {
            f"seconds_to_{step}": F.when(F.size(reached) > k, F.unix_micros(reached[k])
                                         - F.unix_micros(reached[0])) / 1e6
            for k, step in enumerate(STEPS) if k > 0
        }
        return (sessions
                .withColumn("session_id", F.concat_ws("@", "tracking_id",
                                                      F.unix_millis("session_start").cast("string")))
                .withColumn("funnel_level", F.col("_walk.level"))
                .withColumns(seconds_to)
                .withColumn("revenue", F.coalesce("revenue", F.lit(0.0)))
                .withColumn("items", F.coalesce("items", F.lit(0)).cast("long"))
                .drop("_walk"))
    return _


def campaign_funnel(window: timedelta) -> Transform:
    """Sessions -> ``gold/campaign_funnel``: per campaign and tumbling window of session start,
    the sessions that reached each step and each step's conversion from the step before.

    Organic sessions (no campaign) are left out. Grain: (campaign_id, window_start).
    """
    def _(sessions: DataFrame) -> DataFrame:
        win = F.window("session_start", spark_interval(window))
        reached = {f"reached_{s}": F.count_if(F.col("funnel_level") >= i + 1).cast("long")
                   for i, s in enumerate(STEPS)}
        out = (sessions.where(F.col("campaign_id").isNotNull())
               .groupBy("campaign_id", win.alias("w"))
               .agg(F.count("*").alias("sessions"), *[v.alias(k) for k, v in reached.items()]))
        conversions = {
            f"conversion_{cur}": F.try_divide(F.col(f"reached_{cur}"), F.col(f"reached_{prev}"))
            for prev, cur in zip(STEPS, STEPS[1:], strict=False)
        }
        return (out.withColumn("window_start", F.col("w.start"))
                .withColumn("window_end", F.col("w.end"))
                .withColumns(conversions).drop("w"))
    return _
