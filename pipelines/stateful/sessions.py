"""Open sessions as streaming state: each micro-batch re-sessionizes only the journeys it
touches and emits what changed, as a retract stream.

State (kept by the driver: ``stateful/gold.py``): the events of the open sessions, each with
``closes`` (its session's ``session_end + gap``): an Arrow table whose events no micro-batch is
about to touch are kept compressed (``stateful/tiers.Tiered``); Arrow IPC bytes of the plain
table in the state file. A micro-batch's events are added to their journeys' held events; ``sessionize`` runs
on those journeys alone, before and after, and the sessions that differ come out:

- ``kind = 'session', sign = -1``: a session as it was (retracted: it grew, or merged into another);
- ``kind = 'session', sign = +1``: a session as it is now (``is_open`` true);
- ``kind = 'closed'``: a session the watermark has closed (``session_end + gap <= watermark``,
  so no on-time event can change it any more), final; its events leave the state;
- ``kind = 'reminder'``: a closed session with ``reminders.min_adds`` adds and no purchase.

Signed rows make every aggregate incremental: a campaign cell or a product total adds
``sign x`` each row's contribution. The event-time timer is the earliest ``closes`` held,
so sessions close as the watermark moves even when their journeys get no new events.

A micro-batch's cost is its own events plus a binary search per record batch of the open
sessions (held events are never converted unless their journey is touched or closed); it
does not depend on how much the lake holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.streaming.state import GroupState
from pyspark.sql.types import BinaryType, StructField, StructType, _parse_datatype_string

from pipelines.config import Settings
from pipelines.gold.sessions import (
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    SESSION_DDL,
    SESSION_READS,
    Events,
    order,
    session_bounds,
    session_events,
    session_input,
    sessionize,
)
from pipelines.stateful.gold import Kept, Processor, Replayed, by_key, ipc_stream, kept, read_ipc
from pipelines.stateful.tiers import Tiered

_parse_ddl = _parse_datatype_string

HELD = pa.schema([
    ("journey", pa.int64()), ("tracking_id", pa.string()), ("t", pa.int64()), ("step", pa.int8()),
    ("tie", pa.int64()), ("user_id", pa.string()), ("campaign_id", pa.string()),
    ("product_id", pa.string()), ("price", pa.float64()), ("quantity", pa.float64()),
    ("ip_country", pa.string()), ("ip_hash", pa.string()), ("closes", pa.int64()),
])
EVENTS = pa.schema([f for f in HELD if f.name != "closes"])  # EVENT_COLUMNS, typed
# a cold held event is thawed once the watermark is within AHEAD_MS of its session's close,
# and frozen when it is more than twice that away (and not among the newest events)
AHEAD_MS = 120_000
STATE_SCHEMA = StructType([StructField("held", BinaryType())])
CHANGE_DDL = "kind string, sign int, is_open boolean, " + SESSION_DDL


def encode(held: pa.Table) -> bytes:
    return ipc_stream(held, HELD)


def decode(held: Kept | bytes) -> pa.Table:
    """The held events: kept as ``Tiered`` between micro-batches, Arrow IPC bytes in the file."""
    table = kept(held, read_ipc)
    return table.table() if isinstance(table, Tiered) else table


def held_rows(held: Kept | bytes) -> int:
    """How many events ``held`` holds (nothing decompressed)."""
    return held.value.num_rows if isinstance(held, Kept) else decode(held).num_rows


def open_journeys(held: pa.Table) -> pa.Array:
    """The ``tracking_id`` of every journey with an open session in ``held``."""
    return pc.unique(held["tracking_id"])


def closes_at(events: Events, gap: timedelta) -> np.ndarray:
    """Per event (in ``events``' order), ``closes``: its session's ``session_end + gap`` (ms)."""
    rows, journey = order(events)
    t = events["t"].to_numpy().astype(np.int64, copy=False)[rows]
    starts, ends = session_bounds(journey[rows], t, gap)
    closes = np.empty(len(rows), np.int64)
    closes[rows] = np.repeat(t[ends], ends - starts + 1) + int(gap.total_seconds() * 1000)
    return closes


def event_rows(batches: Iterator[pd.DataFrame | pa.Table]) -> pa.Table:
    """A micro-batch's events (Arrow tables, as the stream gives them, or pandas frames) as
    one table of ``EVENTS``."""
    parts = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b[EVENT_COLUMNS], preserve_index=False)
             for b in batches if len(b)]
    return pa.concat_tables([t.select(EVENT_COLUMNS).cast(EVENTS) for t in parts]) if parts \
        else EVENTS.empty_table()


def _changes(sessions: pd.DataFrame, kind: str, sign: int, is_open: bool) -> pd.DataFrame:
    """Session rows as changes of ``kind``: the session columns (the list columns stay Arrow
    lists, as ``sessionize`` built them) with ``kind``, ``sign`` and ``is_open`` in front."""
    return pd.DataFrame({"kind": kind, "sign": sign, "is_open": is_open, **sessions[SESSION_COLUMNS]},
                        index=sessions.index, copy=False)


def session_processor(s: Settings):
    """The processor: a micro-batch's events (or a timer) and the state -> changes."""
    gap, attribution, min_adds = s.sessions.gap, s.sessions.attribution, s.reminders.min_adds
    ahead = AHEAD_MS

    def process(key: tuple, batches: Iterator[pa.Table | pd.DataFrame], state: GroupState
                ) -> Iterator[pd.DataFrame]:
        prior = state.get[0] if state.exists else None
        # the state file may store only the journeys whose events changed; each record batch
        # is kept sorted by journey, so a journey's events are found by binary search, and the
        # events no micro-batch is about to touch are kept compressed (Tiered)
        watermark = state.getCurrentWatermarkMs()
        if isinstance(prior, Kept) and isinstance(prior.value, Tiered):
            kept_as, held = prior, prior.value
        else:  # after a start
            if watermark > 0 and isinstance(prior, Kept) and isinstance(prior.value, Replayed):
                table = prior.value  # read back a record batch at a time, and tiered as it comes
            else:
                table = by_key(decode(prior) if prior is not None else HELD.empty_table(), "journey")
            held = Tiered.started(table, "journey", "closes", watermark + 2 * ahead, 2 * ahead) \
                if watermark > 0 else Tiered(table, "journey", "closes")
            kept_as = Kept(held, encode, "journey", prior.changed if isinstance(prior, Kept) else None,
                           by_key=True)
            del table
        new = event_rows(batches) if not state.hasTimedOut else EVENTS.empty_table()
        out: list[pd.DataFrame] = []
        if new.num_rows:
            held, changed = _touch(held, new, gap, attribution)
            kept_as = kept_as.changing(held, pc.unique(new["journey"]))
            out += changed
        if watermark > 0 and held.num_rows:
            done, held = held.due(watermark)
            if done.num_rows:
                closed = sessionize(done, gap, attribution)
                out.append(_changes(closed, "closed", 1, False))
                due = closed[(closed["adds"] >= min_adds) & (closed["purchases"] == 0)]
                if len(due):
                    out.append(_changes(due, "reminder", 1, False))
                kept_as = kept_as.changing(held, pc.unique(done["journey"]))
            held = held.settled(watermark + ahead, watermark + 2 * ahead)
        if held.num_rows:
            state.update((replace(kept_as, value=held),))
            state.setTimeoutTimestamp(max(held.low() - 1, watermark + 1))
        else:
            state.remove()
        for frame in out:
            if len(frame):
                yield frame
    return process


def _touch(held: Tiered, new: pa.Table, gap: timedelta, attribution: str
           ) -> tuple[Tiered, list[pd.DataFrame]]:
    """Add ``new`` events (``EVENTS``) to their journeys; return the new held events and the
    changes. The events stay Arrow: only the session rows become pandas."""
    touched, rest = held.key_rows(pc.unique(new["journey"]))
    events = pa.concat_tables([touched.select(EVENT_COLUMNS), new])
    is_new = np.zeros(events.num_rows, bool)
    is_new[touched.num_rows:] = True
    old = sessionize(touched, gap, attribution)
    now = sessionize(events.append_column("is_new", pa.array(is_new)), gap, attribution, mark="is_new")
    unchanged = now.loc[~now["marked"].astype(bool), ["tracking_id", "session_start"]]
    kept = old.merge(unchanged, on=["tracking_id", "session_start"], how="left", indicator=True)
    retracted = old[(kept["_merge"] == "left_only").to_numpy()]
    added = now[now["marked"].astype(bool)]
    again = by_key(events.append_column("closes", pa.array(closes_at(events, gap))), "journey")
    return rest.with_hot(again), [_changes(retracted, "session", -1, True),
                                  _changes(added, "session", 1, True)]


def processor(s: Settings) -> Processor:
    """On-time silver events -> the retract stream of sessions (``CHANGE_DDL``;
    times in epoch ms)."""
    return Processor("sessions", session_input(s.gold.buckets), session_events, session_processor(s),
                     STATE_SCHEMA, _parse_ddl(CHANGE_DDL), SESSION_READS, arrow=True)
