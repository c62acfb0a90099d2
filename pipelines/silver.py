"""Silver: parse with an explicit schema, validate against the contract, split the rejects.

One chain serves the stream and the backfill: ``parse -> valid_events -> dedupe ->
to_silver`` (``to_silver`` is ``enrich`` = ``mark_late -> locate -> pseudonymize``, then
conform). The stream's ``stream_rows`` runs ``parse`` over valid and rejected rows at once
(``silver_and_quarantine``), so a micro-batch is one Spark pass; its driver then runs
``mark_late``, ``locate`` and ``pseudonymize`` (``mark_late_arrow`` and, once per distinct
address, ``enrich_arrow``: the Python forms of the same functions). ``locate`` is the IP ->
location join of ``geo.py``; ``pseudonymize`` replaces the raw IP with its keyed
hash and network (``privacy.py``; the raw IP stays in bronze). Deduplication is the one step
with two forms, one rule (one row per ``event_id``, the first delivery wins): ``dedupe``
over a whole batch, and the stream's driver-side state over the window of arrivals
(``stateful/dedupe.py``). ``event_watermark`` is the one definition of the watermark.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines import contract as C
from pipelines.addresses import dotted_quads
from pipelines.common import Transform, require_columns
from pipelines.geo import COLUMNS as LOCATION
from pipelines.geo import Locator, locate
from pipelines.privacy import PSEUDONYM, hash_ip, hash_ips, ipv4_prefixes, pseudonymize, py_ip_prefix, redact
from pipelines.tables import BRONZE_EVENTS, SILVER_EVENTS, SILVER_QUARANTINE, conform

_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": C.CORRUPT}


def parse(df: DataFrame, carry: tuple[str, ...] = ()) -> DataFrame:
    """Bronze rows -> every row typed as ``silver/events`` types it, plus ``reason`` (the first
    contract rule it breaks; null when valid) and the source columns the quarantine keeps
    (null on a valid row).

    The line is parsed once, and each typed value (``contract.typed_fields``) is computed
    once, in a projection of its own, and serves both the row and its checks. ``raw`` and
    the source columns are kept only for rejected rows; a valid row's are in bronze.
    ``carry``: columns of ``df`` passed through as they are. Grain: unchanged.
    """
    require_columns(df, *BRONZE_EVENTS.columns)
    p = F.col("p")
    text = F.when(F.startswith("raw", F.lit("\ufeff")), F.substr("raw", F.lit(2)))  # a byte-order mark
    parsed = df.withColumn("p", F.from_json(F.coalesce(text, "raw"), C.RAW_EVENT_SCHEMA, _JSON_OPTIONS))
    # The values both the checks and the row need, typed once (a projection of their own:
    # Spark would otherwise evaluate each again inside every CASE branch that uses it).
    typed = C.typed_fields(p)
    parsed = parsed.select("*", *[v.alias(f"_{k}") for k, v in typed.items()])
    typed = {k: F.col(f"_{k}") for k in typed}
    event_time = typed["event_time"]
    columns: dict[str, Column] = {
        "event_id": p["event_id"],
        "event_type": p["event_type"],
        "step": typed["step"],
        "event_time": event_time,
        "user_id": p["user_id"],
        "tracking_id": p["tracking_id"],
        "campaign_id": _null_if_blank(p["campaign_id"]),
        "ad_id": _null_if_blank(p["ad_id"]),
        "product_id": _null_if_blank(p["product_id"]),
        "price": typed["price"],
        "quantity": typed["quantity"],
        "ip": p["ip"],
        "user_agent": p["user_agent"],
        "event_date": F.to_date(event_time),
        "ingest_time": F.col("ingest_time"),
        "late": F.lit(False),
    }
    reason = C.rejection_reason(p, typed)
    rejected = reason.isNotNull()
    # Where a rejected row came from; a valid row's is in bronze (the stream collects every
    # row, and a file path on each cost its collect 10%).
    source = [F.when(rejected, F.col(c)).alias(c) for c in ("source_file", "kafka_topic", "kafka_partition",
                                                             "kafka_offset")]
    return parsed.select(*[v.alias(k) for k, v in columns.items()], reason.alias("reason"),
                         F.when(rejected, redact(F.col("raw"))).alias("raw"), *source, *carry)


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
    return df.where(F.col("reason").isNotNull()).withColumns(_stamped()).transform(conform(SILVER_QUARANTINE))


def _stamped() -> dict[str, Column]:
    """The quarantine's own columns: when a row was quarantined, and its partition."""
    return {"quarantine_time": F.current_timestamp(), "ingest_date": F.to_date("ingest_time")}


def dedupe(df: DataFrame) -> DataFrame:
    """One row per ``event_id`` of valid events: the first delivery (earliest ``ingest_time``) wins."""
    first = F.min_by(F.struct(*df.columns), F.col("ingest_time"))
    return df.groupBy("event_id").agg(first.alias("e")).select("e.*")


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


def enrich(watermark: datetime | None, locations: DataFrame, ip_key: bytes) -> Transform:
    """``mark_late`` -> ``locate`` (``locations``: ``geo.ip_locations``) -> ``pseudonymize``
    (``ip_key``: ``privacy.ip_salt``). Grain: unchanged."""
    return lambda events: (events.transform(mark_late(watermark)).transform(locate(locations))
                           .transform(pseudonymize(ip_key)))


def to_silver(watermark: datetime | None, locations: DataFrame, ip_key: bytes) -> Transform:
    """Valid, deduplicated events -> ``silver/events`` rows: ``enrich``, then conform."""
    return lambda events: (events.transform(enrich(watermark, locations, ip_key))
                           .transform(conform(SILVER_EVENTS)))


# What the stream's driver adds to each micro-batch's collected rows, rather than its query:
# they change every micro-batch, and a query whose expressions change (a literal watermark or
# clock) makes Spark generate, and the JVM compile, its code anew each micro-batch
# (docs/performance.md, "A query that never changes").
BY_BATCH = ("late", "quarantine_time")


def silver_and_quarantine(breaks: Mapping[str, Column] | None = None,
                          extra: Mapping[str, Column] | None = None,
                          carry: tuple[str, ...] = ()) -> Transform:
    """Parsed rows, valid and rejected -> one frame holding the columns of both
    ``silver/events`` and ``silver/quarantine`` (``to_silver`` and ``quarantined`` of the same
    rows), so the stream computes a micro-batch in one pass and splits it on ``reason`` (null:
    silver; else: the quarantine). The driver adds the rest: the frame holds ``ip`` instead of
    the address columns (``enrich_arrow``) and leaves out ``BY_BATCH`` (``mark_late_arrow``;
    ``quarantine_time``), so its definition never changes. ``breaks``: named predicates over
    silver's columns (``Quality.fixed_breaks``); each becomes a column of that name, true where
    a valid row breaks it. ``extra``: more named columns over silver's, computed for valid rows
    (gold's hash keys); ``carry``: columns passed through as they are.
    """
    def _(parsed: DataFrame) -> DataFrame:
        rows = parsed.withColumn("ingest_date", F.to_date("ingest_time"))
        by_driver = {*LOCATION, *PSEUDONYM, *BY_BATCH}
        columns = {f.name: f.dataType for t in (SILVER_EVENTS, SILVER_QUARANTINE) for f in t.schema.fields
                   if f.name not in by_driver}
        out = rows.select(*[F.col(name).cast(kind) for name, kind in columns.items()], "ip", *carry)
        valid = F.col("reason").isNull()
        more = {**(breaks or {}), **(extra or {})}
        return out.withColumns({name: F.when(valid, rule) for name, rule in more.items()})
    return _


def mark_late_arrow(rows: pa.Table, watermark: datetime | None) -> pa.Table:
    """``mark_late`` over collected events (the stream's driver): ``late`` is true at or
    before ``watermark`` (a naive UTC time), false everywhere when there is none yet."""
    if watermark is None:
        late = pa.repeat(False, rows.num_rows)
    else:
        times = rows["event_time"]
        late = pc.less_equal(times, pa.scalar(watermark, times.type))
    return rows.append_column("late", late)


class AddressValues:
    """An address -> its ``LOCATION`` then ``PSEUDONYM`` values (``geo.Locator``,
    ``privacy.hash_ip``, ``privacy.py_ip_prefix``). ``quads`` gives those of many plain
    dotted quads at once, in Arrow and numpy; any other value goes one at a time (about 10
    µs of Python each, docs/performance.md), remembering the last ``remembered``: a stream
    sees the same addresses batch after batch. The values depend on the address alone."""

    def __init__(self, locator: Locator, ip_key: bytes, remembered: int = 2**18):
        self.locator, self.key = locator, ip_key
        self.one = lru_cache(maxsize=remembered)(self._values)

    def _values(self, ip: str | None) -> tuple[str | None, ...]:
        return (*self.locator(ip), hash_ip(ip, self.key), py_ip_prefix(ip))

    def __call__(self, ip: str | None) -> tuple[str | None, ...]:
        return self.one(ip)

    def cache_info(self):
        return self.one.cache_info()

    def quads(self, ips: pa.Array, octets: np.ndarray) -> list[pa.Array]:
        """The values of plain dotted quads (``addresses.dotted_quads``), column by column."""
        numbers = octets @ np.array([16777216, 65536, 256, 1], np.int64)
        country, region = self.locator.many(numbers)
        return [country, region, pa.array(hash_ips(ips.to_pylist(), self.key), pa.string()),
                ipv4_prefixes(octets)]


def address_values(locator: Locator, ip_key: bytes, remembered: int = 2**18) -> AddressValues:
    return AddressValues(locator, ip_key, remembered)


def enrich_arrow(rows: pa.Table, values: AddressValues) -> pa.Table:
    """``locate`` -> ``pseudonymize`` on collected rows that hold ``ip`` (``stream_rows``),
    on the driver: each distinct address of the batch gets its values once (the plain
    dotted quads all at once, ``AddressValues.quads``; any other value on its own), spread to
    its rows; ``ip`` is dropped. The same values as the Spark forms
    (``tests/test_privacy.py``), for a fraction of the JVM's cost per row
    (docs/performance.md, "Enrichment on the driver")."""
    distinct = pc.unique(rows["ip"])
    quad, octets = dotted_quads(distinct)
    plain, other = distinct.filter(pa.array(quad)), distinct.filter(pa.array(~quad))
    found = [values(ip) for ip in other.to_pylist()]
    columns = values.quads(plain, octets)
    index = pc.index_in(rows["ip"], value_set=pa.concat_arrays([plain, other]), skip_nulls=False)
    for i, name in enumerate((*LOCATION, *PSEUDONYM)):
        alone = pa.array([v[i] for v in found], pa.string())
        rows = rows.append_column(name, pa.concat_arrays([columns[i].cast(pa.string()), alone]).take(index))
    return rows.drop_columns(["ip"])


def _null_if_blank(c: Column) -> Column:
    return F.when(F.trim(c) != "", c)


BRONZE = "_bronze"  # the bronze row, as a struct, in ``stream_rows``


def stream_rows(extra: Mapping[str, Column], breaks: Mapping[str, Column] | None = None) -> Transform:
    """A stream of bronze rows (``to_bronze``) -> ``silver_and_quarantine`` of them, before
    deduplication (the stream's driver does that: ``stateful/dedupe.py``), with each bronze
    row kept whole in the struct column ``BRONZE``: one Spark pass gives every table its rows.
    It depends on no micro-batch, so the query's definition holds it and Python builds it
    once; ``BY_BATCH`` and the address columns come on the driver (``mark_late_arrow``,
    ``enrich_arrow``), and so do the quality predicates that move with the clock
    (``Quality.with_breaks``)."""
    def _(bronze: DataFrame) -> DataFrame:
        require_columns(bronze, *BRONZE_EVENTS.columns)
        rows = bronze.withColumn(BRONZE, F.struct(*BRONZE_EVENTS.columns))
        return rows.transform(lambda df: parse(df, carry=(BRONZE,))).transform(
            silver_and_quarantine(breaks, extra=extra, carry=(BRONZE,)))
    return _
