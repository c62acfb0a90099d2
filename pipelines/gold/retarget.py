"""Retargeting offers: clickers who did not buy within ``wait``.

An ``ad_click`` with no purchase by the same user in ``(click_time, click_time + wait]`` is a
candidate, due at ``click_time + wait``. Candidates of one user and campaign are taken in
click order; one becomes an offer unless an earlier offer to that user and campaign was for a
click less than ``cooldown`` before it (greedy, so the result does not depend on how the
clicks were batched).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform

OFFER_DDL = ("offer_id string, user_id string, campaign_id string, tracking_id string, "
             "click_time timestamp, due_time timestamp")


def _seconds(d: timedelta) -> F.Column:
    return F.expr(f"INTERVAL {int(d.total_seconds())} SECONDS")


def candidates(wait: timedelta, due_after: datetime | None, due_until: datetime) -> Transform:
    """Silver events -> clicks due in ``(due_after, due_until]`` that no purchase by the same
    user followed within ``wait``. Columns of ``OFFER_DDL`` (but ``offer_id``)."""
    def _(events: DataFrame) -> DataFrame:
        clicks = (events.where((F.col("event_type") == "ad_click") & F.col("campaign_id").isNotNull())
                  .select("user_id", "campaign_id", "tracking_id",
                          F.col("event_time").alias("click_time"))
                  .withColumn("due_time", F.col("click_time") + _seconds(wait))
                  .where(F.col("due_time") <= F.lit(due_until)))
        if due_after is not None:
            clicks = clicks.where(F.col("due_time") > F.lit(due_after))
        buys = events.where(F.col("event_type") == "purchase").select(
            F.col("user_id").alias("buyer"), F.col("event_time").alias("bought_at"))
        bought = ((F.col("buyer") == F.col("user_id")) & (F.col("bought_at") > F.col("click_time"))
                  & (F.col("bought_at") <= F.col("due_time")))
        return clicks.join(buys, bought, "left_anti")
    return _


def cooldown(candidates_pdf: pd.DataFrame, sent_pdf: pd.DataFrame, window: timedelta) -> pd.DataFrame:
    """Greedy cooldown over one group of users: ``sent_pdf`` are offers already made (their
    ``click_time``), ``candidates_pdf`` new candidates. Returns the candidates that become offers."""
    if candidates_pdf.empty:
        return candidates_pdf
    limit = np.timedelta64(int(window.total_seconds() * 1e6), "us")
    last_sent = sent_pdf.groupby(["user_id", "campaign_id"])["click_time"].max().to_dict()
    keep = []
    ordered = candidates_pdf.sort_values(["user_id", "campaign_id", "click_time", "tracking_id"])
    for row in ordered.itertuples(index=False):
        key = (row.user_id, row.campaign_id)
        last = last_sent.get(key)
        if last is None or np.datetime64(row.click_time) - np.datetime64(last) >= limit:
            keep.append(row)
            last_sent[key] = row.click_time
    out = pd.DataFrame(keep, columns=ordered.columns)
    out["offer_id"] = (out["user_id"] + "|" + out["campaign_id"] + "|"
                       + pd.to_datetime(out["click_time"]).dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    return out


def offers(candidate_rows: DataFrame, sent: DataFrame, window: timedelta, buckets: int) -> DataFrame:
    """Candidates + offers already made -> new offers, grouped by a hash of the user."""
    bucket = F.pmod(F.xxhash64("user_id"), F.lit(buckets)).alias("bucket")
    new = candidate_rows.select(bucket, "user_id", "campaign_id", "tracking_id", "click_time", "due_time")
    old = sent.select(bucket, "user_id", "campaign_id", "click_time")

    def per_bucket(new_pdf: pd.DataFrame, old_pdf: pd.DataFrame) -> pd.DataFrame:
        made = cooldown(new_pdf.drop(columns="bucket"), old_pdf, window)
        return made[["offer_id", "user_id", "campaign_id", "tracking_id", "click_time", "due_time"]] \
            if len(made) else pd.DataFrame({c: pd.Series(dtype=object) for c in
                                            ["offer_id", "user_id", "campaign_id", "tracking_id"]}
                                           | {"click_time": pd.Series(dtype="datetime64[us]"),
                                              "due_time": pd.Series(dtype="datetime64[us]")})

    return new.groupBy("bucket").cogroup(old.groupBy("bucket")).applyInPandas(per_bucket, OFFER_DDL)
