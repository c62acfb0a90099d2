"""Silver: parse with an explicit schema, validate against the contract, split the rejects.

One chain serves the stream and the backfill: ``parse -> valid_events -> dedupe ->
to_silver`` (``to_silver`` is ``mark_late -> locate -> pseudonymize -> conform``: ``locate``
is the IP -> location join of ``geo.py``, ``pseudonymize`` replaces the raw IP with its keyed
hash and network, ``privacy.py``; the raw IP stays in bronze). Deduplication is the one step with two
forms: ``dedupe`` over a whole batch, and ``dedupe_stream`` with state in the streaming query,
which runs before ``valid_events`` there (the same rule: one row per ``event_id``, the first
delivery wins). ``event_watermark`` is the
one definition of the watermark; it is Spark's own, so the gold stream's operators (which
read silver) never drop a row silver kept as on time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines import contract as C
from pipelines.common import Transform, require_columns
from pipelines.geo import COLUMNS as LOCATION
from pipelines.geo import locate
from pipelines.privacy import PSEUDONYM, pseudonymize, redact
from pipelines.tables import BRONZE_EVENTS, SILVER_EVENTS, SILVER_QUARANTINE, conform

_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": C.CORRUPT}


def parse(df: DataFrame) -> DataFrame:
    """Bronze rows -> every row typed as ``silver/events`` types it, plus ``reason`` (the first
    contract rule it breaks; null when valid) and the source columns the quarantine keeps.

    One projection: the line is parsed once and each typed value serves both the row and its
    checks (Spark computes the shared expressions once). ``raw`` is kept only for rejected
    rows; a valid row's text is in bronze. Grain: unchanged.
    """
    require_columns(df, *BRONZE_EVENTS.columns)
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
    reason = C.rejection_reason(p)
    keep = ["source_file", "kafka_topic", "kafka_partition", "kafka_offset"]
    text = F.regexp_replace("raw", "^\ufeff", "")  # a byte-order mark opening the line (bronze keeps it)
    parsed = df.withColumn("p", F.from_json(text, C.RAW_EVENT_SCHEMA, _JSON_OPTIONS))
    return parsed.select(*[v.alias(k) for k, v in typed.items()], reason.alias("reason"),
                         F.when(reason.isNotNull(), redact(F.col("raw"))).alias("raw"), *keep)


def valid_events(df: DataFrame) -> DataFrame:
    """Parsed rows without a reason, as ``silver/events`` before ``locate`` and
    ``pseudonymize`` (so with ``ip``; ``late`` false).

    Grain: one row per delivery; ``dedupe`` then keeps one per ``event_id``.
    """
    added = {*LOCATION, *PSEUDONYM}
    return df.where(F.col("reason").isNull()).select(
        *[F.col(f.name).cast(f.dataType) for f in SILVER_EVENTS.schema.fields if f.name not in added], "ip")


def quarantined(df: DataFrame) -> DataFrame:
    """Parsed rows with a reason, as ``silver/quarantine``: the raw text and why it failed."""
    now = F.current_timestamp()
    out = (df.where(F.col("reason").isNotNull())
             .withColumn("quarantine_time", now)
             .withColumn("ingest_date", F.to_date("ingest_time")))
    return out.transform(conform(SILVER_QUARANTINE))


def dedupe(df: DataFrame) -> DataFrame:
    """One row per ``event_id`` of valid events: the first delivery (earliest ``ingest_time``) wins."""
    first = F.min_by(F.struct(*df.columns), F.col("ingest_time"))
    return df.groupBy("event_id").agg(first.alias("e")).select("e.*")


def dedupe_stream(window: timedelta) -> Transform:
    """``dedupe`` for a stream of parsed rows, with state: a valid event whose ``event_id``
    was delivered within ``window`` of arrival time before is dropped (Spark's
    ``dropDuplicatesWithinWatermark``, keyed on ``ingest_time`` so late events still reach
    silver). Rejected rows are never dropped: each gets a key of its own."""
    def _(parsed: DataFrame) -> DataFrame:
        key = F.when(F.col("reason").isNull(), F.concat(F.lit("e:"), F.col("event_id"))).otherwise(
            F.concat(F.lit("q:"), F.expr("uuid()")))
        return (parsed.withColumn("_key", key)
                .withWatermark("ingest_time", f"{int(window.total_seconds())} seconds")
                .dropDuplicatesWithinWatermark(["_key"]).drop("_key"))
    return _


def event_watermark(latest: datetime | None, delay: timedelta) -> datetime | None:
    """The event-time watermark after seeing events up to ``latest``: ``latest - delay``, in
    whole milliseconds as Spark computes it. An event at or before it is late."""
    if latest is None:
        return None
    return latest.replace(microsecond=latest.microsecond // 1000 * 1000) - delay


def mark_late(watermark: datetime | None) -> Transform:
    """Set ``late`` on events at or before ``watermark`` (``event_watermark``).

    Late events stay in silver; the gold stream skips them and counts them (backfills include them).
    """
    def _(df: DataFrame) -> DataFrame:
        if watermark is None:
            return df
        return df.withColumn("late", F.col("event_time") <= F.lit(watermark))
    return _


def to_silver(watermark: datetime | None, locations: DataFrame, ip_key: bytes) -> Transform:
    """Valid, deduplicated events -> ``silver/events`` rows: ``mark_late`` -> ``locate``
    (``locations``: ``geo.ip_locations``) -> ``pseudonymize`` (``ip_key``:
    ``privacy.ip_salt``) -> conform."""
    return lambda events: (events.transform(mark_late(watermark)).transform(locate(locations))
                           .transform(pseudonymize(ip_key)).transform(conform(SILVER_EVENTS)))


def _null_if_blank(c: Column) -> Column:
    return F.when(F.trim(c) != "", c)
