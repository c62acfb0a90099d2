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
in state plus the new ones, and what its open bursts carry of the events they let go) and in
a batch (on all events, closing everything).
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
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from pipelines.common import Transform, sorted_by, unix_millis
from pipelines.config import FraudRule, FraudSettings
from pipelines.stateful.gold import Kept, Processor, by_key, ipc_stream, keep_rows, kept, key_rows, read_ipc
from pipelines.tables import FLAG_SCHEMA

# Rule events as the processor sees them: t is the event time in epoch milliseconds.
EVENT_COLUMNS = ["rule", "entity_id", "t", "value", "event_id"]
# What an open burst holds of the events it let go (``find_bursts``): first_t in epoch ms,
# count and total (the measure) over them, the burst's peak so far, and their first ids.
CARRIED = ["rule", "entity_id", "first_t", "count", "total", "peak", "evidence"]

HELD = pa.schema([("key", pa.int64()), ("rule", pa.string()), ("entity_id", pa.string()),
                  ("t", pa.int64()), ("value", pa.int64()), ("event_id", pa.string()),
                  ("closes", pa.int64())])
CARRY = pa.schema([("rule", pa.string()), ("entity_id", pa.string()), ("first_t", pa.int64()),
                   ("count", pa.int64()), ("total", pa.int64()), ("peak", pa.int64()),
                   ("evidence", pa.list_(pa.string()))])
# Binary fields (Arrow IPC). A file from before ``HELD`` holds one field, JSON text.
STATE_SCHEMA = StructType([StructField("held", BinaryType()), StructField("carried", BinaryType())])


def find_bursts(events: pd.DataFrame, rules: list[FraudRule], close_before_ms: int | None,
                max_evidence: int, carried: pd.DataFrame | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split ``events`` (``EVENT_COLUMNS``) into bursts; return (flags of the flagged bursts
    that are closed, the events of bursts still open that later events can still need, with
    ``closes``: their burst's ``last + window``, and ``CARRIED``: what the open bursts hold
    of the events let go).

    ``close_before_ms``: the watermark; a burst with ``last + window < watermark`` is closed.
    ``None`` closes every burst (a batch over complete data). Vectorised: one sort, then
    numpy over all entities at once.

    ``carried`` (from the call before, in a stream): the part of each open burst whose events
    were let go. It continues the entity's first burst here (every event let go is older than
    every event kept, and within a window of the burst's next one).

    **What an open burst keeps.** An on-time event arrives at or after the watermark ``W``, so
    it can only fall in a span ``[t - window, t]`` with ``t >= W``, and only such a span can
    still count more. So an open burst keeps its events from ``W - window`` on, and its
    events before that become ``CARRIED``: their count, measure, first time, the first
    ``max_evidence`` ids, and the burst's peak so far. The peak stays exact: a span gets
    every event it will ever hold before its first event is let go (``t' < W - window`` and
    ``t' >= t - window`` give ``t < W``: no event can arrive in it any more), and at that
    call it was counted whole. A busy entity that never pauses for a window is held as one
    window of its events, however long its burst lasts.
    """
    carried = carried if carried is not None else _no_carry()
    if events.empty:
        return _no_flags(), events[EVENT_COLUMNS].assign(closes=0), carried
    by_name = {r.name: r for r in rules}
    df = sorted_by(events, ["rule", "entity_id", "t", "event_id"])
    t = df["t"].to_numpy(np.int64)
    window = df["rule"].map({n: int(r.window.total_seconds() * 1000) for n, r in by_name.items()}
                            ).to_numpy(np.int64)
    rule, entity = df["rule"].to_numpy(), df["entity_id"].to_numpy()
    new_key = ~((rule == np.roll(rule, 1)) & (entity == np.roll(entity, 1)))
    new_key[0] = True
    gap = t - np.roll(t, 1)
    new_burst = new_key | (gap > window)
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
    here_total = np.add.reduceat(value, starts)
    here_count = ends - starts + 1
    total, count, first = here_total.copy(), here_count.copy(), t[starts].copy()
    threshold = df["rule"].map({n: r.threshold for n, r in by_name.items()}).to_numpy()[starts]
    closed = np.ones(len(starts), bool) if close_before_ms is None else (
        t[ends] + window[starts] < close_before_ms)

    # What was let go of a burst continues its entity's first burst here.
    prefix: dict[int, list[str]] = {}
    if len(carried):
        heads = pd.DataFrame({"rule": rule[starts], "entity_id": entity[starts],
                              "burst": np.arange(len(starts))})[new_key[starts]]
        joined = heads.merge(carried, on=["rule", "entity_id"])
        b = joined["burst"].to_numpy()
        first[b] = joined["first_t"].to_numpy(np.int64)
        count[b] += joined["count"].to_numpy(np.int64)
        total[b] += joined["total"].to_numpy(np.int64)
        peak[b] = np.maximum(peak[b], joined["peak"].to_numpy(np.int64))
        prefix = dict(zip(b.tolist(), joined["evidence"], strict=True))
    event_ids = df["event_id"].to_numpy()

    def evidence(i: int, upto: int) -> list[str]:
        """The first ``max_evidence`` ids of burst ``i``, of its first ``upto`` events here."""
        head = list(prefix.get(i, []))
        return head + event_ids[starts[i]:starts[i] + min(upto, max_evidence - len(head))].tolist()

    flagged = np.flatnonzero(closed & (peak >= threshold))
    flags = pd.DataFrame({
        "rule": rule[starts[flagged]],
        "entity_id": entity[starts[flagged]],
        "first_event_time": pd.to_datetime(first[flagged], unit="ms"),
        "last_event_time": pd.to_datetime(t[ends[flagged]], unit="ms"),
        "event_count": count[flagged],
        "measure_value": total[flagged],
        "peak_value": peak[flagged],
        "threshold": threshold[flagged].astype(np.int64),
        "evidence_event_ids": [evidence(i, here_count[i]) for i in flagged],
    })
    rule_of = flags["rule"].map(by_name)
    flags["entity_type"] = rule_of.map(lambda r: r.key)
    flags["measure"] = rule_of.map(lambda r: r.measure)
    flags["window_seconds"] = rule_of.map(lambda r: r.window.total_seconds()).astype(float)
    flags["flag_id"] = (flags["rule"] + "|" + flags["entity_id"] + "|"
                        + flags["first_event_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    if close_before_ms is None:
        return flags[FLAG_SCHEMA.fieldNames()], df.iloc[:0][EVENT_COLUMNS].assign(closes=0), _no_carry()

    # An open burst lets go of its events before ``close_before_ms - window``: a prefix.
    is_open = ~closed
    let_go = is_open[burst] & (t < close_before_ms - window)
    gone = np.bincount(burst, weights=let_go, minlength=len(starts)).astype(np.int64)
    gone_total = np.bincount(burst, weights=value * let_go, minlength=len(starts)).astype(np.int64)
    had = np.zeros(len(starts), bool)
    had[list(prefix)] = True
    carry = np.flatnonzero(is_open & ((gone > 0) | had))
    carried_now = pd.DataFrame({
        "rule": rule[starts[carry]], "entity_id": entity[starts[carry]], "first_t": first[carry],
        "count": count[carry] - here_count[carry] + gone[carry],
        "total": total[carry] - here_total[carry] + gone_total[carry],
        "peak": peak[carry],
        "evidence": pd.Series([evidence(i, gone[i]) for i in carry], dtype=object)}, columns=CARRIED)
    keep = is_open[burst] & ~let_go
    open_events = df.loc[keep, EVENT_COLUMNS].assign(closes=(t[ends] + window[starts])[burst][keep])
    return flags[FLAG_SCHEMA.fieldNames()], open_events, carried_now


def _no_flags() -> pd.DataFrame:
    """An empty flags frame whose list column is typed (pyarrow cannot infer an empty list)."""
    empty = pd.DataFrame(columns=FLAG_SCHEMA.fieldNames())
    empty["evidence_event_ids"] = pd.Series([], dtype=pd.ArrowDtype(pa.list_(pa.string())))
    return empty


def _no_carry() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="int64" if c in ("first_t", "count", "total", "peak")
                                      else object) for c in CARRIED})


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


RULE_READS = ("event_type", "user_id", "ip_hash", "quantity", "event_time", "event_id")  # rule_rows'


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


def entity_keys(rule: pd.Series, entity: pd.Series) -> np.ndarray:
    """A 64-bit hash of (rule, entity): the held table's key. Two pairs that share one are
    only ever stored and re-run together, which is correct, just more work."""
    return pd.util.hash_array((rule + "\x1f" + entity).to_numpy(object)).view(np.int64)


def encode(held: pa.Table) -> bytes:
    return ipc_stream(held, HELD)


def decode(blob: bytes | None) -> pa.Table:
    """The stored open-burst events. JSON text (a list of columns) is the form before
    ``HELD``: its ``closes`` is unknown, so 0, and the first call re-runs those bursts."""
    if not blob:
        return HELD.empty_table()
    if blob[:1] != b"[":
        return read_ipc(blob)
    frame = pd.DataFrame(dict(zip(EVENT_COLUMNS, json.loads(blob), strict=True)), columns=EVENT_COLUMNS)
    return _held(frame.astype({"t": "int64", "value": "int64"}).assign(closes=0))


def encode_carried(carried: pd.DataFrame) -> bytes:
    return ipc_stream(pa.Table.from_pandas(carried[CARRIED], schema=CARRY, preserve_index=False))


def decode_carried(blob: bytes | None) -> pd.DataFrame:
    return read_ipc(blob).to_pandas() if blob else _no_carry()


def _held(frame: pd.DataFrame) -> pa.Table:
    """Open-burst events (``EVENT_COLUMNS`` and ``closes``) as the held table, keyed, in key
    order (``key_rows``)."""
    frame = frame.assign(key=entity_keys(frame["rule"], frame["entity_id"]))
    return by_key(pa.Table.from_pandas(frame[HELD.names], schema=HELD, preserve_index=False), "key")


def fraud_processor(settings: FraudSettings):
    """The processor. State: the events the open bursts still need, each with ``closes``
    (its burst's ``last + window``), keyed by (rule, entity); and what the open bursts carry
    of the events they let go (``find_bursts``). A call re-runs ``find_bursts`` only on the
    entities its events touch and the bursts the watermark closes: the other held events are
    not read, and the state file stores the keys that changed (``Kept.key``). The event-time
    timer is the earliest ``closes``, so flags come out when no new rule events do."""
    rules, cap = settings.rules, settings.max_evidence
    known = [r.name for r in rules]

    def process(key: tuple, batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        prior, carry = state.get if state.exists else (None, None)
        held = kept(prior, decode) if prior is not None else HELD.empty_table()
        carried = kept(carry, decode_carried) if carry is not None else _no_carry()
        if isinstance(prior, Kept) and prior.by_key:
            kept_as = prior
        else:  # after a start: the bursts of a rule removed from config since go
            gone = pc.invert(pc.is_in(held["rule"], value_set=pa.array(known, pa.string())))
            kept_as = Kept(held, encode, "key", pc.unique(held["key"].filter(gone)), by_key=True)
            held = by_key(keep_rows(held, pc.invert(gone)), "key")
        new = pd.concat([b[EVENT_COLUMNS] for b in batches if len(b)], ignore_index=True) \
            if not state.hasTimedOut else pd.DataFrame(columns=EVENT_COLUMNS)
        new = new[new["rule"].isin(known)]
        watermark = state.getCurrentWatermarkMs()
        touched = pa.array(entity_keys(new["rule"], new["entity_id"]), pa.int64())
        found, rest = key_rows(held, "key", touched.to_numpy())
        due = pc.less(rest["closes"], watermark)  # the bursts the watermark closes
        work = pa.concat_tables([found, rest.filter(due)])
        keys = pc.unique(pa.concat_arrays([touched, work["key"].combine_chunks()]))
        work = work.to_pandas()[EVENT_COLUMNS]
        events = pd.concat([work, new], ignore_index=True) if len(work) else new
        carried = carried[carried["rule"].isin(known)]
        mine = np.isin(entity_keys(carried["rule"], carried["entity_id"]), keys.to_numpy())
        flags, still_open, carried_now = find_bursts(events, rules, watermark, cap, carried[mine])
        if (~mine).any():
            carried = pd.concat([carried[~mine], carried_now], ignore_index=True)
        else:
            carried = carried_now
        held = pa.concat_tables([keep_rows(rest, pc.invert(due), "key"), _held(still_open)])
        if held.num_rows:
            state.update((kept_as.changing(held, keys), Kept(carried, encode_carried)))
            state.setTimeoutTimestamp(int(max(pc.min(held["closes"]).as_py(), watermark)) + 1)
        else:
            state.remove()
        if not flags.empty:
            yield flags.assign(kind="flag")
    return process


def processor(settings: FraudSettings) -> Processor:
    """On-time silver events -> ``gold/fraud_flags`` rows (``kind`` 'flag'), emitted as
    bursts close."""
    return Processor("fraud", rule_events(settings.rules, settings.buckets), rule_rows(settings.rules),
                     fraud_processor(settings), STATE_SCHEMA,
                     StructType([StructField("kind", StringType()), *FLAG_SCHEMA.fields]), RULE_READS)


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
