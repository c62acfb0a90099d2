"""Cart reminders: sessions that filled a cart and ended without buying."""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform


def cart_reminders(min_adds: int, gap: timedelta, watermark: datetime | None) -> Transform:
    """Sessions -> ``gold/cart_reminders``: one reminder per session with ``adds >= min_adds``
    and no purchase, once the session is over.

    A session is over when the watermark passes ``session_end + gap`` (an on-time event
    could no longer extend it, nor add the purchase that would cancel the reminder): the
    event-time timer of this rule. ``reminder_id`` is the ``session_id``, so a session gets
    at most one reminder however often it is judged.
    """
    def _(sessions: DataFrame) -> DataFrame:
        if watermark is None:
            return sessions.where(F.lit(False)).select(*_columns())
        gap_interval = F.expr(f"INTERVAL {int(gap.total_seconds())} SECONDS")
        over = F.col("session_end") + gap_interval <= F.lit(watermark)
        due = sessions.where((F.col("adds") >= min_adds) & (F.col("purchases") == 0) & over)
        return due.select(*_columns())
    return _


def _columns() -> list:
    return [F.col("session_id").alias("reminder_id"), "user_id", "tracking_id", "session_start",
            "session_end", "adds", F.col("added_products").alias("products"),
            F.current_timestamp().alias("created_at")]
