"""Retargeting offers: clickers who did not buy within ``wait``.

An ``ad_click`` with no purchase by the same user in ``(click_time, click_time + wait]`` is a
candidate, due at ``click_time + wait``. Candidates of one user and campaign are taken in
click order; one becomes an offer unless an earlier offer to that user and campaign was for a
click less than ``cooldown`` before it (greedy, so the result does not depend on how the
clicks were batched).

``due_offers`` is the rule, on pandas frames of one group of users: the streaming processor
(``stateful/offers.py``) calls it on the clicks that came due, and a batch build
(``batch_offers``) on all of them. Times are epoch milliseconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.common import Transform, sorted_by, unix_millis, utc_now
from pipelines.io.delta_rs import arrow_schema

CLICK_COLUMNS = ["user_id", "campaign_id", "tracking_id", "click_time"]
OFFER_COLUMNS = ["offer_id", "user_id", "campaign_id", "tracking_id", "click_time", "due_time"]
OFFER_DDL = ("offer_id string, user_id string, campaign_id string, tracking_id string, "
             "click_time long, due_time long")


def _ms(d: timedelta) -> int:
    return int(d.total_seconds() * 1000)


def due_offers(clicks: pd.DataFrame, purchases: pd.DataFrame, last_sent: pd.DataFrame,
               wait: timedelta, cooldown: timedelta) -> pd.DataFrame:
    """The offers among ``clicks`` (``CLICK_COLUMNS``, all due), given the users'
    ``purchases`` (``user_id``, ``t``) and ``last_sent`` (``user_id``, ``campaign_id``,
    ``click_time`` of the last offer per pair). Returns ``OFFER_COLUMNS``."""
    if clicks.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c.endswith("time") else object)
                             for c in OFFER_COLUMNS})
    clicks = sorted_by(clicks, ["click_time", "user_id", "campaign_id", "tracking_id"])
    buys = purchases.sort_values("t")[["user_id", "t"]].astype({"t": "int64"})
    nxt = pd.merge_asof(clicks[["click_time", "user_id"]].astype({"click_time": "int64"}), buys,
                        left_on="click_time", right_on="t", by="user_id",
                        direction="forward", allow_exact_matches=False)["t"]
    bought = nxt.notna() & (nxt <= clicks["click_time"] + _ms(wait))
    return _cooldown(clicks[~bought.to_numpy()], last_sent, cooldown, wait)


def _cooldown(candidates: pd.DataFrame, last_sent: pd.DataFrame, cooldown: timedelta,
              wait: timedelta) -> pd.DataFrame:
    """Greedy in click order per (user, campaign): keep a candidate at least ``cooldown``
    after the pair's last offer."""
    last = {(r.user_id, r.campaign_id): r.click_time for r in last_sent.itertuples(index=False)}
    limit = _ms(cooldown)
    ordered = sorted_by(candidates, ["user_id", "campaign_id", "click_time", "tracking_id"])
    keep = np.zeros(len(ordered), bool)
    for i, (user, campaign, click) in enumerate(zip(ordered["user_id"], ordered["campaign_id"],
                                                    ordered["click_time"], strict=True)):
        if (user, campaign) not in last or click - last[(user, campaign)] >= limit:
            keep[i] = True
            last[(user, campaign)] = click
    made = ordered[keep].copy()
    made["due_time"] = made["click_time"] + _ms(wait)
    made["offer_id"] = made["user_id"] + "|" + made["campaign_id"] + "|" + _iso_ms(made["click_time"])
    return made[OFFER_COLUMNS]


def _iso_ms(ms: pd.Series) -> pd.Series:
    """Epoch milliseconds as ``%Y-%m-%dT%H:%M:%S.%f`` text (six fraction digits), formatted by
    numpy: ``strftime`` makes a Python object per value (0.7 s per 250k)."""
    text = np.datetime_as_string(ms.to_numpy(np.int64).astype("datetime64[ms]"), unit="ms")
    return pd.Series(text, index=ms.index, dtype=object) + "000"


def offer_input(buckets: int) -> Transform:
    """Silver events -> the clicks and purchases the rule reads, with a ``bucket`` of users."""
    def _(events: DataFrame) -> DataFrame:
        wanted = ((F.col("event_type") == "ad_click") & F.col("campaign_id").isNotNull()) | (
            F.col("event_type") == "purchase")
        return events.where(wanted).select(
            "event_type", "user_id", "campaign_id", "tracking_id", "event_time",
            F.unix_millis("event_time").alias("t"),
            F.pmod(F.xxhash64("user_id"), F.lit(buckets)).alias("bucket"))
    return _


OFFER_READS = ("event_type", "user_id", "campaign_id", "tracking_id", "event_time")  # offer_events'


def offer_events(events: pa.Table) -> pa.Table:
    """``offer_input`` on the driver, over a stream's collected micro-batch of on-time silver
    rows (without ``bucket`` and ``event_time``, which only a Spark group needs)."""
    kind = events["event_type"]
    wanted = pc.or_(pc.and_(pc.equal(kind, "ad_click"), pc.is_valid(events["campaign_id"])),
                    pc.equal(kind, "purchase"))
    rows = events.filter(wanted)
    return pa.table({"event_type": rows["event_type"], "user_id": rows["user_id"],
                     "campaign_id": rows["campaign_id"], "tracking_id": rows["tracking_id"],
                     "t": unix_millis(rows["event_time"])})


def split(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``offer_input`` -> (clicks as ``CLICK_COLUMNS``, purchases as user_id, t)."""
    is_click = (events["event_type"] == "ad_click").to_numpy()
    clicks = events[is_click].rename(columns={"t": "click_time"})[CLICK_COLUMNS]
    return clicks, events[~is_click][["user_id", "t"]]


def to_offer_rows() -> Transform:
    """Python's offers (times in ms) -> ``gold/retarget_offers`` columns."""
    return lambda rows: rows.withColumns({
        "click_time": F.timestamp_millis("click_time"), "due_time": F.timestamp_millis("due_time"),
        "created_at": F.current_timestamp()})


def as_offers(offers: pa.Table, now: datetime | None = None) -> pa.Table:
    """``to_offer_rows`` in Arrow, for the stream's driver: offers as ``due_offers`` makes them
    (times in epoch ms) -> ``gold/retarget_offers`` rows, made at ``now``."""
    def times(c: str) -> pa.ChunkedArray:
        return pc.cast(pc.cast(offers[c], pa.int64()), pa.timestamp("ms", tz="UTC"))
    schema = arrow_schema(T.RETARGET_OFFERS)
    created = pa.scalar(utc_now(now), schema.field("created_at").type)
    columns = {c: offers[c] for c in ("offer_id", "user_id", "campaign_id", "tracking_id")}
    columns |= {"click_time": times("click_time"), "due_time": times("due_time"),
                "created_at": pa.repeat(created, offers.num_rows)}
    return pa.table(columns).cast(schema)


def batch_offers(wait: timedelta, cooldown: timedelta, buckets: int,
                 watermark: datetime | None, sent: DataFrame | None = None) -> Transform:
    """Silver events -> the offers due by ``watermark`` (``OFFER_DDL``), after the offers
    already ``sent`` (``user_id``, ``campaign_id``, ``click_time``; for the cooldown)."""
    due_until = None if watermark is None else int(watermark.timestamp() * 1000)

    def per_bucket(events: pd.DataFrame, sent_pdf: pd.DataFrame) -> pd.DataFrame:
        clicks, purchases = split(events)
        if due_until is not None:
            clicks = clicks[clicks["click_time"] + _ms(wait) <= due_until]
        last = sent_pdf.groupby(["user_id", "campaign_id"], as_index=False)["click_time"].max()
        return due_offers(clicks, purchases, last, wait, cooldown)

    def _(events: DataFrame) -> DataFrame:
        rows = events.transform(offer_input(buckets))
        if due_until is None:
            return rows.sparkSession.createDataFrame([], OFFER_DDL)
        spark = events.sparkSession
        old = sent if sent is not None else spark.createDataFrame(
            [], "user_id string, campaign_id string, click_time timestamp")
        old = old.select("user_id", "campaign_id", F.unix_millis("click_time").alias("click_time"),
                         F.pmod(F.xxhash64("user_id"), F.lit(buckets)).alias("bucket"))
        return (rows.groupBy("bucket").cogroup(old.groupBy("bucket"))
                .applyInPandas(per_bucket, OFFER_DDL))
    return _
