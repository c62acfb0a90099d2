"""Retargeting offers as streaming state: the event-time timer of the
rule in ``gold/retarget.py``.

State (three Arrow tables; IPC bytes in the state file, which between complete files holds
only the rows of the keys a batch changed): the clicks not yet due, the purchases that could
still cancel one (``t > watermark - wait``), and each (user, campaign)'s last offer while its
cooldown can still matter. When the watermark passes a click's ``click_time + wait``, ``due_offers``
decides it: a purchase that arrived on time has cancelled it, or the cooldown holds it back,
or it becomes an offer. A purchase behind the watermark is late and cancels nothing, exactly
as with Flink's event-time timers. The timer is the earliest due click, so offers go out as
the watermark moves even when no new clicks come.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.streaming.state import GroupState
from pyspark.sql.types import BinaryType, StructField, StructType, _parse_datatype_string

from pipelines.config import RetargetSettings
from pipelines.gold.retarget import OFFER_DDL, OFFER_READS, _ms, due_offers, offer_events, offer_input, split
from pipelines.stateful.gold import Kept, Processor, ipc_stream, keep_rows, kept, read_ipc

CLICKS = pa.schema([("user_id", pa.string()), ("campaign_id", pa.string()),
                    ("tracking_id", pa.string()), ("click_time", pa.int64())])
PURCHASES = pa.schema([("user_id", pa.string()), ("t", pa.int64())])
SENT = pa.schema([("user_id", pa.string()), ("campaign_id", pa.string()), ("click_time", pa.int64())])
SCHEMAS = (CLICKS, PURCHASES, SENT)
# Each table's key in the state file: a file between complete ones stores the rows of the
# keys a batch changed (``stateful/gold.Kept``), not every pending click. Clicks and
# purchases change by their times (a batch's new ones, and the ones the watermark let go);
# offers by user (the group by rewrites a user's rows when one of them changes).
KEYS = ("click_time", "t", "user_id")
STATE_SCHEMA = StructType([StructField(n, BinaryType()) for n in ("clicks", "purchases", "sent")])


def _table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def _decode(blob: bytes | None, schema: pa.Schema) -> pa.Table:
    return read_ipc(blob) if blob else schema.empty_table()


def _of(table: pa.Table, column: str, values: pa.ChunkedArray) -> pd.DataFrame:
    """The rows of ``table`` whose ``column`` is among ``values``, as pandas."""
    return table.filter(pc.is_in(table[column], value_set=pc.unique(values))).to_pandas()


def offer_processor(r: RetargetSettings):
    """The processor: a micro-batch's clicks and purchases (or a timer) and the state -> offers.
    The state stays Arrow tables between micro-batches: a call converts to pandas only the
    clicks that came due and their users' purchases and offers, so storing it costs no
    conversion of every pending click."""
    wait, cooldown = _ms(r.wait), _ms(r.cooldown)

    def process(key: tuple, batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        prior = state.get if state.exists else (None, None, None)
        pending, purchases, sent = (kept(blob, partial(_decode, schema=schema)) for blob, schema
                                    in zip(prior, SCHEMAS, strict=True))
        changed: tuple[list, list, list] = ([], [], [])  # each table's keys whose rows changed
        frames = [b for b in batches if len(b)]
        if frames:
            clicks, buys = split(pd.concat(frames, ignore_index=True))
            clicks, buys = _table(clicks, CLICKS), _table(buys, PURCHASES)
            pending = pa.concat_tables([pending, clicks])
            purchases = pa.concat_tables([purchases, buys])
            changed[0].append(clicks["click_time"])
            changed[1].append(buys["t"])
        watermark = state.getCurrentWatermarkMs()
        offers = None
        if watermark > 0:
            due = pc.less_equal(pending["click_time"], watermark - wait)
            if pc.any(due).as_py():
                clicks = pending.filter(due)
                users = clicks["user_id"]
                offers = due_offers(clicks.to_pandas(), _of(purchases, "user_id", users),
                                    _of(sent, "user_id", users), r.wait, r.cooldown)
                if len(offers):
                    made = _table(offers, SENT)
                    last = pa.concat_tables([sent, made]).group_by(["user_id", "campaign_id"]).aggregate(
                        [("click_time", "max")]).rename_columns(["user_id", "campaign_id", "click_time"])
                    sent = last.select(SENT.names).cast(SENT)
                    changed[2].append(made["user_id"])
                pending = keep_rows(pending, pc.invert(due))
                changed[0].append(clicks["click_time"])
            old = pc.less_equal(purchases["t"], watermark - wait)
            changed[1].append(purchases["t"].filter(old))
            purchases = keep_rows(purchases, pc.invert(old))
            old = pc.less_equal(sent["click_time"], watermark - wait - cooldown)
            changed[2].append(sent["user_id"].filter(old))
            sent = keep_rows(sent, pc.invert(old))
        if pending.num_rows or purchases.num_rows or sent.num_rows:
            tables = (pending, purchases, sent)
            state.update(tuple(_kept(was, table, schema, key, keys)
                               for was, table, schema, key, keys
                               in zip(prior, tables, SCHEMAS, KEYS, changed, strict=True)))
            wake = (pc.min(pending["click_time"]).as_py() + wait if pending.num_rows else
                    max(pc.max(purchases["t"]).as_py() + wait if purchases.num_rows else 0,
                        pc.max(sent["click_time"]).as_py() + wait + cooldown if sent.num_rows else 0))
            state.setTimeoutTimestamp(max(int(wake) - 1, watermark + 1))
        else:
            state.remove()
        if offers is not None and len(offers):
            yield offers.assign(kind="offer")
    return process


def _kept(was: Kept | bytes | None, table: pa.Table, schema: pa.Schema, key: str, keys: list) -> Kept:
    """``table`` as kept, keyed by ``key``: the ``keys`` this call changed are added to those
    the batch changed before it (``was``: the field as the batch's earlier call left it)."""
    base = was if isinstance(was, Kept) else Kept(None, partial(ipc_stream, schema=schema), key)
    chunks = [chunk for k in keys for chunk in k.chunks]
    return base.changing(table, pa.chunked_array(chunks, schema.field(key).type).combine_chunks())


def processor(r: RetargetSettings) -> Processor:
    """On-time silver events -> offers as they come due (``OFFER_DDL``)."""
    return Processor("offers", offer_input(r.buckets), offer_events, offer_processor(r), STATE_SCHEMA,
                     _parse_datatype_string("kind string, " + OFFER_DDL), OFFER_READS)
