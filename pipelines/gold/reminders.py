"""Cart reminders: sessions that filled a cart and ended without buying."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.common import Transform, utc_now
from pipelines.io.delta_rs import arrow_schema


def cart_reminders(min_adds: int) -> Transform:
    """Closed sessions -> ``gold/cart_reminders``: one reminder per session with
    ``adds >= min_adds`` and no purchase.

    Only closed sessions (``is_open`` false: the watermark has passed ``session_end + gap``,
    so no on-time event can extend them, nor add the purchase that would cancel the reminder)
    are judged: that is the rule's event-time timer. The stream's session processor emits each
    session once as it closes; ``reminder_id`` is the ``session_id``, so a session is reminded
    at most once however often it is judged.
    """
    def _(sessions: DataFrame) -> DataFrame:
        due = sessions.where(~F.col("is_open") & (F.col("adds") >= min_adds) & (F.col("purchases") == 0))
        return due.select(*reminder_columns())
    return _


def reminder_columns() -> list[Column | str]:
    return [F.col("session_id").alias("reminder_id"), "user_id", "tracking_id", "session_start",
            "session_end", "adds", F.col("added_products").alias("products"),
            F.current_timestamp().alias("created_at")]


def as_reminders(sessions: pa.Table, now: datetime | None = None) -> pa.Table:
    """``reminder_columns`` in Arrow, for the stream's driver: sessions due a reminder
    (``gold/session_funnel`` rows) -> their ``gold/cart_reminders`` rows, made at ``now``."""
    schema = arrow_schema(T.CART_REMINDERS)
    created = pa.scalar(utc_now(now), schema.field("created_at").type)
    columns = {"reminder_id": sessions["session_id"], "user_id": sessions["user_id"],
               "tracking_id": sessions["tracking_id"], "session_start": sessions["session_start"],
               "session_end": sessions["session_end"], "adds": sessions["adds"],
               "products": sessions["added_products"],
               "created_at": pa.repeat(created, sessions.num_rows)}
    return pa.table(columns).cast(schema)
