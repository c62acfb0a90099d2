"""The campaign funnel: per campaign and tumbling window of session start, the sessions that
reached each step, and each step's conversion from the step before.

Cells are sums over sessions, so they are computed from *signed* session rows: a batch build
gives every session ``sign = 1``; the stream gives ``-1`` for a session as it was and ``+1``
for it as it is now (``stateful/sessions.py``), and adds the result to the stored cells.
``funnel_cells`` serves the batch build; ``funnel_cell_deltas`` is its pandas twin for the
stream's micro-batch changes, which sit on the driver (a Spark job there cost 5-10 s per 1M
events); the stream == batch tests compare the tables they produce.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, require_columns
from pipelines.config import spark_interval
from pipelines.contract import STEPS

REACHED = [f"reached_{s}" for s in STEPS]
COUNTS = ["sessions", *REACHED]  # additive
CONVERSIONS = {f"conversion_{cur}": (f"reached_{prev}", f"reached_{cur}")
               for prev, cur in zip(STEPS, STEPS[1:], strict=False)}


def ratio_sql(numerator: str, denominator: str) -> str:
    """``numerator / denominator`` as a double, null when the denominator is 0: one SQL text
    for Spark (a batch build) and for delta-rs (the stream's MERGE)."""
    return f"CAST({numerator} AS DOUBLE) / NULLIF({denominator}, 0)"


def conversions(count: Callable[[str], str] = lambda c: c) -> dict[str, str]:
    """Each step's conversion from the one before, as SQL over ``count(column)``."""
    return {name: ratio_sql(count(cur), count(prev)) for name, (prev, cur) in CONVERSIONS.items()}


def window_of(col: str, window: timedelta) -> Column:
    """The start of the funnel window that holds timestamp ``col``."""
    return F.window(col, spark_interval(window)).start


def funnel_cells(window: timedelta) -> Transform:
    """Signed sessions (``campaign_id``, ``session_start``, ``funnel_level``, ``sign``) ->
    per (campaign, window): ``sessions`` and ``reached_<step>`` summed with their signs.
    Organic sessions (no campaign) are left out. Grain: (campaign_id, window_start)."""
    def _(sessions: DataFrame) -> DataFrame:
        require_columns(sessions, "campaign_id", "session_start", "funnel_level", "sign")
        reached = [F.sum(F.when(F.col("funnel_level") >= i, F.col("sign")).otherwise(0)).cast("long")
                   .alias(c) for i, c in enumerate(REACHED, start=1)]
        win = F.window("session_start", spark_interval(window))
        return (sessions.where(F.col("campaign_id").isNotNull())
                .groupBy("campaign_id", win.alias("w"))
                .agg(F.sum("sign").cast("long").alias("sessions"), *reached)
                .select("campaign_id", F.col("w.start").alias("window_start"),
                        F.col("w.end").alias("window_end"), *COUNTS))
    return _


def closes(gap: timedelta) -> Column:
    """When a window closes: sessions that start in it may go on for ``gap`` after its end."""
    return F.col("window_end") + F.expr(f"INTERVAL {int(gap.total_seconds())} SECONDS")


def campaign_funnel(window: timedelta, gap: timedelta, watermark: datetime | None) -> Transform:
    """Sessions (each counted once) -> ``gold/campaign_funnel`` rows: cells with conversions,
    ``closed`` once the watermark has passed ``window_end + gap``, and ``window_date``."""
    def _(sessions: DataFrame) -> DataFrame:
        signed = sessions.withColumn("sign", F.lit(1)) if "sign" not in sessions.columns else sessions
        cells = signed.transform(funnel_cells(window)).where(F.col("sessions") != 0)
        closed = F.lit(False) if watermark is None else closes(gap) <= F.lit(watermark)
        return (cells.withColumns({k: F.expr(v) for k, v in conversions().items()})
                .withColumn("closed", closed)
                .withColumn("window_date", F.to_date("window_start")))
    return _


def funnel_cell_deltas(sessions: pd.DataFrame, window: timedelta) -> pd.DataFrame:
    """``funnel_cells`` on the driver, for the stream's signed session rows of one
    micro-batch (a few thousand rows: a Spark job would cost more than the sums). The same
    cells, counts and window edges (tumbling windows from the epoch, like ``F.window``); the
    stream == batch tests pin the two together."""
    s = sessions[sessions["campaign_id"].notna()]
    width = int(window.total_seconds() * 1_000_000)
    start_us = s["session_start"].to_numpy("datetime64[us]").astype(np.int64)
    sign = s["sign"].to_numpy(np.int64)
    level = s["funnel_level"].to_numpy(np.int64)
    cells = pd.DataFrame({"campaign_id": s["campaign_id"].to_numpy(),
                          "window_start": start_us - start_us % width, "sessions": sign,
                          **{c: np.where(level >= i, sign, 0) for i, c in enumerate(REACHED, start=1)}})
    out = cells.groupby(["campaign_id", "window_start"], as_index=False, sort=False).sum()
    start = out["window_start"].to_numpy().astype("datetime64[us]")
    out["window_start"] = start
    out.insert(2, "window_end", start + np.timedelta64(width, "us"))
    return out[["campaign_id", "window_start", "window_end", *COUNTS]]
