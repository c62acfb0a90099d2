"""Sessions and their six-step funnel, computed over many journeys at once with numpy.

A session is the events of one ``tracking_id`` with no gap longer than ``gap``. Its funnel
level is the length of the longest prefix of steps 1..6 that occurs in time order (other
events may come in between; equal timestamps are ordered by step index): ClickHouse's
``windowFunnel`` with the session as the window.

``sessionize`` is the one definition of a session. The streaming processor
(``stateful/sessions.py``) calls it on the open events of the journeys a micro-batch touches,
and a batch build calls it on every event (``spark_sessions``), so the stream and a backfill
get the same rows by construction. It is vectorised: one sort, then array operations over
all sessions; its cost is linear in the events given.

Times are epoch milliseconds (``t``); the Spark wrappers convert them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, distinct_lists, unix_millis
from pipelines.contract import STEPS

# What sessionize reads, per event. ``step`` is the event type's funnel index (1-6);
# ``journey`` and ``tie`` are 64-bit hashes of ``tracking_id`` and ``event_id`` (Spark's
# xxhash64): integer keys sort fast, and ``tie`` orders equal (time, step) pairs the same way
# however the events were batched.
EVENT_COLUMNS = ["journey", "tracking_id", "t", "step", "tie", "user_id", "campaign_id",
                 "product_id", "price", "quantity", "ip_country", "ip_hash"]
AD, CLICK, CART, PURCHASE = 1, 2, 4, 6
TO_STEP = [f"seconds_to_{s}" for s in STEPS[1:]]
# An open session's storage slot in ``gold/session_funnel`` (``open_slot``): the 10-second slot
# its ``session_end`` falls in. The open rows are partitioned by it, so a micro-batch's MERGE
# rewrites the slots of the sessions it changed or closed (the recent ones, and those ending
# ``gap`` ago), not every open session: delta-rs rewrites whole files (no deletion vectors).
# A fixed width: a stored row's slot is found again from its ``session_end``.
OPEN_SLOT_SECONDS = 10
SESSION_COLUMNS = ["tracking_id", "session_start", "session_end", "user_id", "campaign_id",
                   "funnel_level", "event_count", "clicks", "adds", "purchases", "items",
                   "revenue", "added_products", "purchased_products", "countries", "ip_hashes", *TO_STEP]


Events = pd.DataFrame | pa.Table  # what ``sessionize`` and ``order`` take


def order(events: Events) -> tuple[np.ndarray, np.ndarray]:
    """The row order that groups events by journey, each journey in time order (equal times
    in step order, then by ``tie``, so the order never depends on how events were batched);
    and each event's journey code (one integer per ``tracking_id``)."""
    journey = pd.factorize(_numbers(events, "journey", np.int64))[0]
    t, step, tie = (_numbers(events, c, np.int64) for c in ("t", "step", "tie"))
    rows = _order(journey, t, step, tie)
    same_hash = journey[rows][1:] == journey[rows][:-1]
    if same_hash.any() and (same_hash & _differs(_strings(events, "tracking_id").take(rows))).any():
        # two journeys share a hash: code them by their text
        journey = pc.dictionary_encode(_strings(events, "tracking_id")).indices.to_numpy().astype(np.int64)
        rows = _order(journey, t, step, tie)
    return rows, journey


def _numbers(events: Events, column: str, dtype: type) -> np.ndarray:
    """A numeric column as numpy (a missing float as NaN)."""
    values = events[column]
    if isinstance(values, pa.ChunkedArray):
        return values.to_numpy().astype(dtype, copy=False)
    return values.to_numpy(dtype)


def _strings(events: Events, column: str) -> pa.Array:
    """A string column as one Arrow array: no Python string per value."""
    values = events[column]
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return pa.array(values.to_numpy(object), pa.string(), from_pandas=True)


def _differs(ordered: pa.Array) -> np.ndarray:
    """Whether each value differs from the one before it (from the second on)."""
    if len(ordered) < 2:
        return np.zeros(0, bool)
    return pc.not_equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).to_numpy(zero_copy_only=False)


_TIME_BITS = 41  # 2**41 ms is 69 years: a batch's time span fits below the journey code


def _order(journey: np.ndarray, t: np.ndarray, step: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Sort by (journey, t, step, tie): one argsort of journey and time packed in an int64,
    then a full lexsort only if some journey has two events in the same millisecond."""
    span = int(t.max() - t.min()) if len(t) else 0
    if span >= 2**_TIME_BITS or len(t) >= 2 ** (63 - _TIME_BITS):
        return np.lexsort((tie, step, t, journey))
    key = (journey.astype(np.int64) << _TIME_BITS) | (t - t.min())
    rows = np.argsort(key, kind="stable")
    if (key[rows][1:] == key[rows][:-1]).any():
        rows = np.lexsort((tie, step, key))
    return rows


def session_bounds(journey: np.ndarray, t: np.ndarray, gap: timedelta) -> tuple[np.ndarray, np.ndarray]:
    """First and last position of each session in ordered journey codes and times."""
    new = np.ones(len(t), bool)
    new[1:] = (journey[1:] != journey[:-1]) | (t[1:] - t[:-1] > int(gap.total_seconds() * 1000))
    starts = np.flatnonzero(new)
    return starts, np.append(starts[1:], len(t)) - 1


def sessionize(events: Events, gap: timedelta, attribution: str = "first_touch",
               mark: str | None = None) -> pd.DataFrame:
    """Events (``EVENT_COLUMNS``, any order; a pandas frame or an Arrow table) -> one row per
    session (``SESSION_COLUMNS``).

    ``session_start``/``session_end`` are epoch ms; ``campaign_id`` is that of the first
    (``first_touch``) or last (``last_touch``) ad event naming one, else None (organic);
    ``user_id`` is the first event's; ``countries`` and ``ip_hashes`` the sorted distinct
    ``ip_country`` and ``ip_hash`` of its events (unknown ones left out);
    ``seconds_to_<step>`` is the time from step 1 to the event that raised the level to that
    step. ``purchases`` counts purchase events, ``items`` their quantities and ``revenue``
    price x quantity (a missing quantity counts 1).
    With ``mark`` (a boolean event column), ``marked`` says whether any event of the session
    has it set.

    Text columns stay Arrow until the session rows: only one Python string per session and
    column is made, none per event.
    """
    if len(events) == 0:
        return empty_sessions(mark)
    rows, journey = order(events)
    t = _numbers(events, "t", np.int64)[rows]
    step = _numbers(events, "step", np.int64)[rows]
    starts, ends = session_bounds(journey[rows], t, gap)
    sid = np.repeat(np.arange(len(starts)), ends - starts + 1)
    is_buy = step == PURCHASE
    quantity = _numbers(events, "quantity", np.float64)[rows]
    price = _numbers(events, "price", np.float64)[rows]
    line = np.nan_to_num(price) * np.where(np.isnan(quantity), 1.0, quantity)
    first = rows[starts]
    out = pd.DataFrame({
        "tracking_id": _text(_strings(events, "tracking_id").take(first)),
        "session_start": t[starts],
        "session_end": t[ends],
        "user_id": _text(_strings(events, "user_id").take(first)),
        "campaign_id": _touch(_strings(events, "campaign_id"), rows, step, starts, ends, attribution),
        "event_count": (ends - starts + 1).astype(np.int64),
        "clicks": np.add.reduceat(step == CLICK, starts).astype(np.int64),
        "adds": np.add.reduceat(step == CART, starts).astype(np.int64),
        "purchases": np.add.reduceat(is_buy, starts).astype(np.int64),
        "items": np.add.reduceat(np.where(is_buy, np.nan_to_num(quantity), 0), starts).astype(np.int64),
        "revenue": np.add.reduceat(np.where(is_buy, line, 0.0), starts),
    })
    level, reached = _walk(t, step, starts, ends)
    out["funnel_level"] = level
    for k, col in enumerate(TO_STEP, start=1):
        out[col] = np.where(level > k, (reached[k] - reached[0]) / 1000.0, np.nan)
    product = _strings(events, "product_id")
    out["added_products"] = _products(product, rows, sid, step == CART, len(starts))
    out["purchased_products"] = _products(product, rows, sid, is_buy, len(starts))
    every = np.ones(len(rows), bool)
    out["countries"] = _products(_strings(events, "ip_country"), rows, sid, every, len(starts))
    out["ip_hashes"] = _products(_strings(events, "ip_hash"), rows, sid, every, len(starts))
    if mark is None:
        return out[SESSION_COLUMNS]
    out["marked"] = np.logical_or.reduceat(_numbers(events, mark, bool)[rows], starts)
    return out[[*SESSION_COLUMNS, "marked"]]


def _text(values: pa.Array) -> np.ndarray:
    """Arrow strings as a numpy array of Python strings (None for a missing one)."""
    return values.to_numpy(zero_copy_only=False).astype(object, copy=False)


def empty_sessions(mark: str | None = None) -> pd.DataFrame:
    columns = [*SESSION_COLUMNS, "marked"] if mark else SESSION_COLUMNS
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _touch(campaign: pa.Array, rows: np.ndarray, step: np.ndarray, starts: np.ndarray,
           ends: np.ndarray, attribution: str) -> np.ndarray:
    """The campaign of each session's first (or last) ad event that names one."""
    named = (step <= CLICK) & campaign.is_valid().to_numpy(zero_copy_only=False)[rows]
    pos = np.arange(len(rows))
    if attribution == "first_touch":
        pick = np.minimum.reduceat(np.where(named, pos, len(rows)), starts)
        found = pick <= ends
    else:
        pick = np.maximum.reduceat(np.where(named, pos, -1), starts)
        found = pick >= starts
    out = np.full(len(starts), None, dtype=object)
    out[found] = _text(campaign.take(rows[pick[found]]))
    return out


def _walk(t: np.ndarray, step: np.ndarray, starts: np.ndarray, ends: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """The greedy funnel walk over every session at once: step k is reached by the first
    event of step k after (in order) the event that reached step k-1. Returns each session's
    level and, per step, the time it was reached (meaningful where level > step index)."""
    level = np.zeros(len(starts), np.int64)
    cursor = starts - 1  # the row that reached the previous step
    reached = np.zeros((len(STEPS), len(starts)), np.int64)
    for k in range(1, len(STEPS) + 1):
        rows = np.flatnonzero(step == k)
        if rows.size == 0:
            break
        i = np.searchsorted(rows, cursor + 1)
        cand = rows[np.minimum(i, rows.size - 1)]
        hit = (level == k - 1) & (i < rows.size) & (cand <= ends)
        level[hit] = k
        cursor = np.where(hit, cand, cursor)
        reached[k - 1] = np.where(hit, t[cand], 0)
    return level, reached


def _products(values: pa.Array, rows: np.ndarray, sid: np.ndarray, mask: np.ndarray,
              n: int) -> pd.arrays.ArrowExtensionArray:
    """Per session, the sorted distinct non-null values (product ids, countries) of the
    ordered rows in ``mask`` (``distinct_lists``)."""
    keep = np.flatnonzero(mask)
    return pd.arrays.ArrowExtensionArray(distinct_lists(sid[keep], values.take(rows[keep]), n))


# --- Spark: the same function over a DataFrame -------------------------------------------

# What Python returns per session (times as epoch ms); ``to_session_rows`` types it.
SESSION_DDL = (
    "tracking_id string, session_start long, session_end long, user_id string, "
    "campaign_id string, funnel_level int, event_count long, clicks long, adds long, "
    "purchases long, items long, revenue double, added_products array<string>, "
    "purchased_products array<string>, countries array<string>, ip_hashes array<string>, "
    + ", ".join(f"{c} double" for c in TO_STEP)
)


def hash_keys() -> dict[str, Column]:
    """``journey`` and ``tie``: Spark's xxhash64 of ``tracking_id`` and ``event_id``. The
    stream's silver projection computes them too (``streams/silver.py``), so its driver-side
    ``session_events`` gets the very values a batch build hashes here."""
    return {"journey": F.xxhash64("tracking_id"), "tie": F.xxhash64("event_id")}


def session_input(buckets: int) -> Transform:
    """Silver events -> what ``sessionize`` reads (``EVENT_COLUMNS``) plus ``bucket``: journeys
    are hashed into ``buckets`` groups, so the Python side sees a few fat groups, not one per
    journey (a group costs about 1 ms whatever its size). ``event_time`` stays: a stream's
    watermark filters on it."""
    def _(events: DataFrame) -> DataFrame:
        keys = hash_keys()
        return events.select(
            keys["journey"].alias("journey"), "tracking_id",
            F.unix_millis("event_time").alias("t"), F.col("step").cast("tinyint").alias("step"),
            keys["tie"].alias("tie"), "user_id", "campaign_id", "product_id",
            "price", F.col("quantity").cast("double").alias("quantity"), "ip_country", "ip_hash",
            "event_time",
            F.pmod(F.xxhash64("tracking_id"), F.lit(buckets)).alias("bucket"))
    return _


SESSION_READS = ("journey", "tracking_id", "event_time", "step", "tie", "user_id", "campaign_id",
                 "product_id", "price", "quantity", "ip_country", "ip_hash")  # session_events'


def session_events(events: pa.Table) -> pa.Table:
    """``session_input`` on the driver, over a stream's collected micro-batch of on-time
    silver rows that carry ``hash_keys``: ``EVENT_COLUMNS``, typed as Spark types them (the
    stream == batch tests hold the two together)."""
    return pa.table({
        "journey": events["journey"], "tracking_id": events["tracking_id"],
        "t": unix_millis(events["event_time"]), "step": pc.cast(events["step"], pa.int8()),
        "tie": events["tie"], "user_id": events["user_id"], "campaign_id": events["campaign_id"],
        "product_id": events["product_id"], "price": events["price"],
        "quantity": pc.cast(events["quantity"], pa.float64()), "ip_country": events["ip_country"],
        "ip_hash": events["ip_hash"]})


def typed_session_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``to_session_rows`` on the driver, for the stream's changes (which carry ``is_open``):
    ``session_id``, times as timestamps and ``session_date``, the same values Spark gives (the
    stream == batch tests compare the two). The stream's micro-batch changes never need a
    round trip through Spark for four columns."""
    start, end = rows["session_start"].astype("int64"), rows["session_end"].astype("int64")
    out = rows.copy(deep=False)  # new columns on a shallow copy: ``assign`` copies every block
    # ``session_id`` and ``session_date`` are made in Arrow and stay Arrow-backed (no Python
    # string or date per row); the tables take them as they are
    millis = pa.array(start.to_numpy())
    tracking = pa.array(rows["tracking_id"].to_numpy(object), pa.string(), from_pandas=True)
    out["session_id"] = pd.arrays.ArrowExtensionArray(
        pc.binary_join_element_wise(tracking, pc.cast(millis, pa.string()), "@"))
    out["session_start"] = pd.to_datetime(start, unit="ms")
    out["session_end"] = pd.to_datetime(end, unit="ms")
    out["open_slot"] = (end // (OPEN_SLOT_SECONDS * 1000) * OPEN_SLOT_SECONDS).astype("Int64").where(
        rows["is_open"].astype(bool))
    out["session_date"] = pd.arrays.ArrowExtensionArray(pc.cast(millis.cast(pa.timestamp("ms")), pa.date32()))
    return out


def open_slots(ends: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``open_slot`` of open sessions ending at ``ends`` (timestamps): the epoch second that
    starts the ``OPEN_SLOT_SECONDS`` slot each falls in."""
    micros = pc.cast(pc.cast(ends, pa.timestamp("us")), pa.int64())
    return pc.multiply(pc.divide(micros, OPEN_SLOT_SECONDS * 1_000_000), OPEN_SLOT_SECONDS)


def to_session_rows(gap: timedelta, watermark: datetime | None) -> Transform:
    """Python's session rows -> ``gold/session_funnel`` columns: times typed, ``session_id``
    (``<tracking_id>@<start in epoch ms>``), ``session_date``, ``is_open`` (the watermark
    has not yet passed ``session_end + gap``, so an on-time event may still change it) and
    ``open_slot`` (``OPEN_SLOT_SECONDS``).
    Rows that already carry ``is_open`` (the stream's) keep it."""
    def _(rows: DataFrame) -> DataFrame:
        typed = rows.withColumns({
            "session_id": F.concat_ws("@", "tracking_id", F.col("session_start").cast("string")),
            "session_start": F.timestamp_millis("session_start"),
            "session_end": F.timestamp_millis("session_end"),
        })
        if "is_open" not in rows.columns:
            closes = F.col("session_end") + F.expr(f"INTERVAL {int(gap.total_seconds())} SECONDS")
            is_open = F.lit(True) if watermark is None else closes > F.lit(watermark)
            typed = typed.withColumn("is_open", is_open)
        slot = F.floor(F.unix_seconds("session_end") / OPEN_SLOT_SECONDS) * OPEN_SLOT_SECONDS
        return typed.withColumns({"session_date": F.to_date("session_start"),
                                  "open_slot": F.when(F.col("is_open"), slot.cast("long"))})
    return _


def batch_sessions(gap: timedelta, attribution: str, buckets: int) -> Transform:
    """Silver events -> one row per session (``SESSION_DDL``), computed by ``sessionize`` in
    ``buckets`` groups: what a backfill uses, so it matches the stream row for row."""
    def per_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        return sessionize(pdf, gap, attribution)

    def _(events: DataFrame) -> DataFrame:
        return (events.transform(session_input(buckets)).groupBy("bucket")
                .applyInPandas(per_bucket, SESSION_DDL))
    return _
