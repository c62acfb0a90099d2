"""Retargeting offers as streaming state: the event-time timer of the
rule in ``gold/retarget.py``.

State (Arrow IPC bytes): the clicks not yet due, the purchases that could still cancel one
(``t > watermark - wait``), and each (user, campaign)'s last offer while its cooldown can
still matter. When the watermark passes a click's ``click_time + wait``, ``due_offers``
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
from pyspark.sql.streaming.state import GroupState
from pyspark.sql.types import BinaryType, StructField, StructType, _parse_datatype_string

from pipelines.config import RetargetSettings
from pipelines.gold.retarget import OFFER_DDL, _ms, due_offers, offer_events, offer_input, split
from pipelines.stateful.gold import Kept, Processor, ipc_stream, kept, read_ipc

CLICKS = pa.schema([("user_id", pa.string()), ("campaign_id", pa.string()),
                    ("tracking_id", pa.string()), ("click_time", pa.int64())])
PURCHASES = pa.schema([("user_id", pa.string()), ("t", pa.int64())])
SENT = pa.schema([("user_id", pa.string()), ("campaign_id", pa.string()), ("click_time", pa.int64())])
STATE_SCHEMA = StructType([StructField(n, BinaryType()) for n in ("clicks", "purchases", "sent")])


def _encode(frame: pd.DataFrame, schema: pa.Schema) -> bytes:
    return ipc_stream(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False))


def _decode(blob: bytes | None, schema: pa.Schema) -> pd.DataFrame:
    table = read_ipc(blob) if blob else schema.empty_table()
    return table.to_pandas()


def offer_processor(r: RetargetSettings):
    """The processor: a micro-batch's clicks and purchases (or a timer) and the state -> offers."""
    wait, cooldown = _ms(r.wait), _ms(r.cooldown)

    def process(key: tuple, batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        held = state.get if state.exists else (None, None, None)
        pending, purchases, sent = (kept(blob, partial(_decode, schema=schema)) for blob, schema
                                    in zip(held, (CLICKS, PURCHASES, SENT), strict=True))
        frames = [b for b in batches if len(b)]
        if frames:
            clicks, buys = split(pd.concat(frames, ignore_index=True))
            pending = pd.concat([pending, clicks], ignore_index=True)
            purchases = pd.concat([purchases, buys], ignore_index=True)
        watermark = state.getCurrentWatermarkMs()
        offers = None
        if watermark > 0:
            due = (pending["click_time"] + wait <= watermark).to_numpy()
            if due.any():
                offers = due_offers(pending[due], purchases, sent, r.wait, r.cooldown)
                sent = (pd.concat([sent, offers[["user_id", "campaign_id", "click_time"]]])
                        .groupby(["user_id", "campaign_id"], as_index=False)["click_time"].max())
                pending = pending[~due]
            purchases = purchases[purchases["t"] > watermark - wait]
            sent = sent[sent["click_time"] > watermark - wait - cooldown]
        if len(pending) or len(purchases) or len(sent):
            state.update(tuple(Kept(frame, partial(_encode, schema=schema)) for frame, schema
                               in ((pending, CLICKS), (purchases, PURCHASES), (sent, SENT))))
            wake = (pending["click_time"].min() + wait if len(pending) else
                    max(purchases["t"].max() + wait if len(purchases) else 0,
                        sent["click_time"].max() + wait + cooldown if len(sent) else 0))
            state.setTimeoutTimestamp(max(int(wake) - 1, watermark + 1))
        else:
            state.remove()
        if offers is not None and len(offers):
            yield offers.assign(kind="offer")
    return process


def processor(r: RetargetSettings) -> Processor:
    """On-time silver events -> offers as they come due (``OFFER_DDL``)."""
    return Processor("offers", offer_input(r.buckets), offer_events, offer_processor(r), STATE_SCHEMA,
                     _parse_datatype_string("kind string, " + OFFER_DDL))
