"""Silver: parse with an explicit schema, validate against the contract, split the rejects.

All functions are pure ``DataFrame -> DataFrame`` and serve the stream and the backfill alike.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines import contract as C
from pipelines.common import Transform, require_columns
from pipelines.tables import BRONZE_EVENTS, SILVER_EVENTS, SILVER_QUARANTINE, conform

_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": C.CORRUPT}


def parse(df: DataFrame) -> DataFrame:
    """Add ``p`` (the line parsed with ``RAW_EVENT_SCHEMA``) and ``reason`` (null when valid).

    Input: bronze rows (``raw``, ``ingest_time`` and source columns). Grain: unchanged.
    """
    require_columns(df, *BRONZE_EVENTS.columns)
    parsed = df.withColumn("p", F.from_json("raw", C.RAW_EVENT_SCHEMA, _JSON_OPTIONS))
    return parsed.withColumn("reason", C.rejection_reason(F.col("p")))


def valid_events(df: DataFrame) -> DataFrame:
    """Parsed rows without a reason, typed as ``silver/events``. ``late`` starts false.

    Grain: one row per delivery; ``dedupe`` then keeps one per ``event_id``.
    """
    p = F.col("p")
    event_time = C.parse_event_time(p["event_time"])
    typed: dict[str, Column] = {
        "event_id": p["event_id"],
        "event_type": p["event_type"],
        "step": C.step_index(p["event_type"]),
        "event_time": event_time,
        "user_id": p["user_id"],
        "tracking_id": p["tracking_id"],
        "campaign_id": _null_if_blank(p["campaign_id"]),
        "ad_id": _null_if_blank(p["ad_id"]),
        "product_id": _null_if_blank(p["product_id"]),
        "price": p["price"].try_cast("double"),
        "quantity": p["quantity"].try_cast("int"),
        "ip": p["ip"],
        "user_agent": p["user_agent"],
        "event_date": F.to_date(event_time),
        "ingest_time": F.col("ingest_time"),
        "late": F.lit(False),
    }
    out = df.where(F.col("reason").isNull()).select(*[v.alias(k) for k, v in typed.items()])
    return out.transform(conform(SILVER_EVENTS))


def quarantined(df: DataFrame) -> DataFrame:
    """Parsed rows with a reason, as ``silver/quarantine``: the raw text and why it failed."""
    now = F.current_timestamp()
    out = (df.where(F.col("reason").isNotNull())
             .withColumn("quarantine_time", now)
             .withColumn("ingest_date", F.to_date("ingest_time")))
    return out.transform(conform(SILVER_QUARANTINE))


def dedupe(df: DataFrame) -> DataFrame:
    """One row per ``event_id``: the first delivery (earliest ``ingest_time``) wins."""
    first = F.min_by(F.struct(*df.columns), F.col("ingest_time"))
    return df.groupBy("event_id").agg(first.alias("e")).select("e.*")


def mark_late(watermark: datetime | None) -> Transform:
    """Set ``late`` on events older than ``watermark`` (max event time seen - delay).

    Late events stay in silver; gold streams skip them and count them (backfills include them).
    """
    def _(df: DataFrame) -> DataFrame:
        if watermark is None:
            return df
        return df.withColumn("late", F.col("event_time") < F.lit(watermark))
    return _


def _null_if_blank(c: Column) -> Column:
    return F.when(F.trim(c) != "", c)
