"""Fraud velocity flags: declarative rules evaluated by one stateful processor.

**Burst.** For one rule and entity, a burst is a maximal run of the rule's events in which
each event follows the one before by at most the rule's ``window``. A burst is *flagged* when
some span of ``window`` inside it (both ends included) holds a measure (event count or summed
quantity) >= ``threshold``. A flagged burst gives exactly one flag, carrying the whole burst:
its first and last event time, its event count and measure, the peak measure within one
window, and the event ids (up to ``max_evidence``).

**Closing.** A burst is closed, and its flag emitted, once the event-time watermark has
passed ``last_event + window``: no on-time event can extend it any more. Flags therefore
appear ``window + watermark delay`` after a burst ends.

The same ``find_bursts`` function runs inside the streaming processor (on the events it holds
in state plus the new ones) and in a batch (on all events, closing everything).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupState
from pyspark.sql.types import StringType, StructField, StructType

from pipelines.common import Transform, unix_millis
from pipelines.config import FraudRule, FraudSettings
from pipelines.stateful.gold import Kept, Processor, kept
from pipelines.tables import FLAG_SCHEMA

# Rule events as the processor sees them: t is the event time in epoch milliseconds.
EVENT_COLUMNS = ["rule", "entity_id", "t", "value", "event_id"]

STATE_SCHEMA = StructType([StructField("pending", StringType())])


def find_bursts(events: pd.DataFrame, rules: list[FraudRule], close_before_ms: int | None,
                max_evidence: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``events`` (``EVENT_COLUMNS``) into bursts; return (flags of the flagged bursts
    that are closed, the events of bursts still open).

    ``close_before_ms``: the watermark; a burst with ``last + window < watermark`` is closed.
    ``None`` closes every burst (a batch over complete data). Vectorised: one sort, then
    numpy over all entities at once.
    """
    if events.empty:
        return _no_flags(), events
    by_name = {r.name: r for r in rules}
    df = events.sort_values(["rule", "entity_id", "t", "event_id"], kind="stable").reset_index(drop=True)
    t = df["t"].to_numpy(np.int64)
    window = df["rule"].map({n: int(r.window.total_seconds() * 1000) for n, r in by_name.items()}
                            ).to_numpy(np.int64)
    same_key = (df["rule"].to_numpy() == np.roll(df["rule"].to_numpy(), 1)) & (
        df["entity_id"].to_numpy() == np.roll(df["entity_id"].to_numpy(), 1))
    gap = t - np.roll(t, 1)
    new_burst = ~same_key | (gap > window)
    new_burst[0] = True
    burst = np.cumsum(new_burst) - 1

    # Peak measure in any closed span [t - window, t], computed for every event at once:
    # shift each burst far apart on the time axis so one searchsorted serves them all.
    spread = int(t.max() - t.min() + 2 * window.max() + 1)
    shifted = t + burst * spread
    value = df["value"].to_numpy(np.int64)
    cum = np.concatenate([[0], np.cumsum(value)])
    left = np.searchsorted(shifted, shifted - window, side="left")
    in_window = cum[1:] - cum[left]

    starts = np.flatnonzero(new_burst)
    ends = np.append(starts[1:], len(df)) - 1
    peak = np.maximum.reduceat(in_window, starts)
    total = np.add.reduceat(value, starts)
    threshold = df["rule"].map({n: r.threshold for n, r in by_name.items()}).to_numpy()[starts]
    closed = np.ones(len(starts), bool) if close_before_ms is None else (
        t[ends] + window[starts] < close_before_ms)

    flagged = np.flatnonzero(closed & (peak >= threshold))
    flags = pd.DataFrame({
        "rule": df["rule"].to_numpy()[starts[flagged]],
        "entity_id": df["entity_id"].to_numpy()[starts[flagged]],
        "first_event_time": pd.to_datetime(t[starts[flagged]], unit="ms"),
        "last_event_time": pd.to_datetime(t[ends[flagged]], unit="ms"),
        "event_count": (ends - starts + 1)[flagged],
        "measure_value": total[flagged],
        "peak_value": peak[flagged],
        "threshold": threshold[flagged].astype(np.int64),
        "evidence_event_ids": [df["event_id"].iloc[starts[i]:min(ends[i] + 1, starts[i] + max_evidence)]
                               .tolist() for i in flagged],
    })
    rule_of = flags["rule"].map(by_name)
    flags["entity_type"] = rule_of.map(lambda r: r.key)
    flags["measure"] = rule_of.map(lambda r: r.measure)
    flags["window_seconds"] = rule_of.map(lambda r: r.window.total_seconds()).astype(float)
    flags["flag_id"] = (flags["rule"] + "|" + flags["entity_id"] + "|"
                        + flags["first_event_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    open_events = df.loc[~np.repeat(closed, ends - starts + 1), EVENT_COLUMNS]
    return flags[FLAG_SCHEMA.fieldNames()], open_events


def _no_flags() -> pd.DataFrame:
    """An empty flags frame whose list column is typed (pyarrow cannot infer an empty list)."""
    empty = pd.DataFrame(columns=FLAG_SCHEMA.fieldNames())
    empty["evidence_event_ids"] = pd.Series([], dtype=pd.ArrowDtype(pa.list_(pa.string())))
    return empty


def rule_events(rules: list[FraudRule], buckets: int) -> Transform:
    """Silver events -> one row per (rule, event) a rule looks at: ``EVENT_COLUMNS`` plus
    ``event_time`` and ``bucket``. One pass: each event becomes an array of the rules it
    matches (most match none), exploded; rows without an entity are left out."""
    def _(events: DataFrame) -> DataFrame:
        matches = []
        for r in rules:
            entity = F.col("user_id") if r.key == "user" else F.col("ip_hash")
            value = F.lit(1) if r.measure == "count" else F.coalesce(F.col("quantity"), F.lit(1))
            hit = F.col("event_type").isin(*r.event_types) & entity.isNotNull()
            matches.append(F.when(hit, F.struct(F.lit(r.name).alias("rule"),
                                                entity.alias("entity_id"),
                                                value.cast("long").alias("value"))))
        relevant = F.col("event_type").isin(*{t for r in rules for t in r.event_types})
        exploded = (events.where(relevant)
                    .select("event_id", "event_time", F.explode(F.array(*matches)).alias("m"))
                    .where(F.col("m").isNotNull()))
        return exploded.select(
            "m.rule", "m.entity_id", F.unix_millis("event_time").alias("t"), "m.value", "event_id",
            "event_time", F.pmod(F.xxhash64("m.rule", "m.entity_id"), F.lit(buckets)).alias("bucket"))
    return _


def rule_rows(rules: list[FraudRule]) -> Callable[[pa.Table], pa.Table]:
    """``rule_events`` on the driver, over a stream's collected micro-batch of on-time silver
    rows: ``EVENT_COLUMNS``, one row per (rule, event) the rule looks at."""
    def _(events: pa.Table) -> pa.Table:
        parts = []
        for r in rules:
            entity = events["user_id"] if r.key == "user" else events["ip_hash"]
            hit = pc.and_(pc.is_in(events["event_type"], pa.array(r.event_types, pa.string())),
                          pc.is_valid(entity))
            rows = events.filter(hit)
            value = (pa.repeat(1, rows.num_rows).cast(pa.int64()) if r.measure == "count"
                     else pc.cast(pc.coalesce(rows["quantity"], 1), pa.int64()))
            parts.append(pa.table({
                "rule": pa.repeat(r.name, rows.num_rows).cast(pa.string()),
                "entity_id": entity.filter(hit), "t": unix_millis(rows["event_time"]),
                "value": value, "event_id": rows["event_id"]}))
        return pa.concat_tables(parts) if parts else pa.table(
            {c: pa.array([], pa.int64() if c in ("t", "value") else pa.string()) for c in EVENT_COLUMNS})
    return _


def _encode(events: pd.DataFrame) -> str:
    return json.dumps([events[c].tolist() for c in EVENT_COLUMNS])


def _decode(text: str) -> pd.DataFrame:
    columns = json.loads(text)
    return pd.DataFrame(dict(zip(EVENT_COLUMNS, columns, strict=True))).astype({"t": "int64",
                                                                                 "value": "int64"})


def fraud_processor(settings: FraudSettings):
    """The processor. State: the events of the open bursts (JSON text). The event-time timer
    is set to when the earliest open burst closes, so flags come out when no new rule events do."""
    rules, cap = settings.rules, settings.max_evidence
    window_ms = {r.name: int(r.window.total_seconds() * 1000) for r in rules}

    def process(key: tuple, batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        held = [kept(state.get[0], _decode)] if state.exists else []
        frames = [f for f in held + [b[EVENT_COLUMNS] for b in batches] if len(f)]
        events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EVENT_COLUMNS)
        events = events[events["rule"].isin(window_ms)]  # a rule removed from config: its open bursts go
        watermark = state.getCurrentWatermarkMs()
        flags, still_open = find_bursts(events, rules, watermark, cap)
        if still_open.empty:
            state.remove()
        else:
            state.update((Kept(still_open, _encode),))
            last = still_open.groupby(["rule", "entity_id"])["t"].max().reset_index()
            closes_at = (last["t"] + last["rule"].map(window_ms)).min()
            state.setTimeoutTimestamp(int(max(closes_at, watermark)) + 1)
        if not flags.empty:
            yield flags.assign(kind="flag")
    return process


def processor(settings: FraudSettings) -> Processor:
    """On-time silver events -> ``gold/fraud_flags`` rows (``kind`` 'flag'), emitted as
    bursts close."""
    return Processor("fraud", rule_events(settings.rules, settings.buckets), rule_rows(settings.rules),
                     fraud_processor(settings), STATE_SCHEMA,
                     StructType([StructField("kind", StringType()), *FLAG_SCHEMA.fields]))


def fraud_flags_batch(events: DataFrame, settings: FraudSettings,
                      watermark: datetime | None = None) -> DataFrame:
    """Batch silver events -> the flags of every burst closed by ``watermark`` (all when None)."""
    close = None if watermark is None else int(watermark.timestamp() * 1000)
    rules, cap = settings.rules, settings.max_evidence

    def per_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        flags = find_bursts(pdf[EVENT_COLUMNS], rules, close, cap)[0]
        return flags if len(flags) else _no_flags()

    rows = events.transform(rule_events(rules, settings.buckets))
    return rows.groupBy("bucket").applyInPandas(per_bucket, FLAG_SCHEMA)
