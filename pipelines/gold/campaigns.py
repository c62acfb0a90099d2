"""Campaign performance and the budget recommendation.

Two steps, so the stream can keep it current without re-reading sessions:
1. ``campaign_totals``: signed sessions -> per campaign, additive totals (sessions, clicks,
   purchases, revenue); the stream adds each micro-batch's totals to the stored ones;
2. ``performance``: every campaign's totals -> conversion and budget shares. The shares depend
   on all campaigns together, so this runs on the whole (small: one row per campaign) table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, require_columns
from pipelines.tables import CAMPAIGN_PERFORMANCE, PERFORMANCE_TOTALS

PRIOR_CLICKS = 100
BUDGET_RULE = (
    "share ∝ clicks × smoothed conversion, where smoothed conversion = "
    "(purchases + {prior_clicks} × overall conversion) / (clicks + {prior_clicks})"
)


def campaign_totals() -> Transform:
    """Signed sessions -> per campaign: ``sessions``, ``clicks`` (ad_click events),
    ``purchases`` (sessions with a purchase: orders) and ``revenue``, each summed with the
    session's ``sign``. Organic sessions are left out. Grain: campaign_id."""
    def _(sessions: DataFrame) -> DataFrame:
        require_columns(sessions, "campaign_id", "clicks", "purchases", "revenue")
        sign = F.col("sign") if "sign" in sessions.columns else F.lit(1)
        return (sessions.where(F.col("campaign_id").isNotNull()).groupBy("campaign_id").agg(
            F.sum(sign).cast("long").alias("sessions"),
            F.sum(sign * F.col("clicks")).cast("long").alias("clicks"),
            F.sum(F.when(F.col("purchases") > 0, sign).otherwise(0)).cast("long").alias("purchases"),
            F.sum(sign * F.col("revenue")).cast("double").alias("revenue")))
    return _


def performance(totals: pd.DataFrame, prior_clicks: int = PRIOR_CLICKS) -> pd.DataFrame:
    """Per-campaign totals (``PERFORMANCE_TOTALS``) -> ``gold/campaign_performance`` rows.

    ``purchase_conversion`` = purchases / clicks (10,000 clicks and 50 purchases is 0.5%). The
    budget today is taken as proportional to clicks (``current_budget_share``). The
    recommendation re-weights it by conversion, shrunk toward the overall conversion by
    ``prior_clicks`` pseudo-clicks so a small campaign is not over-trusted, then normalises:
    spend moves from low- to high-converting campaigns. Campaigns left with no session (all
    retracted) are dropped.
    """
    out = totals[totals["sessions"] != 0].copy()
    clicks = out["clicks"].to_numpy(np.float64)
    purchases = out["purchases"].to_numpy(np.float64)
    overall = purchases.sum() / clicks.sum() if clicks.sum() else np.nan
    smoothed = (purchases + prior_clicks * overall) / (clicks + prior_clicks)
    weight = clicks * smoothed
    with np.errstate(divide="ignore", invalid="ignore"):
        out["purchase_conversion"] = np.where(clicks > 0, purchases / clicks, np.nan)
        out["current_budget_share"] = clicks / clicks.sum() if clicks.sum() else np.nan
        recommended = weight / np.nansum(weight) if np.nansum(weight) else np.full(len(out), np.nan)
    out["smoothed_conversion"] = smoothed
    out["recommended_budget_share"] = np.where(np.isnan(recommended), out["current_budget_share"],
                                               recommended)
    out["budget_change"] = out["recommended_budget_share"] - out["current_budget_share"]
    out["budget_rule"] = BUDGET_RULE.format(prior_clicks=prior_clicks)
    return out[CAMPAIGN_PERFORMANCE.columns].sort_values("campaign_id", ignore_index=True)


def add_totals(current: pd.DataFrame, delta: pd.DataFrame) -> pd.DataFrame:
    """Stored totals plus a micro-batch's signed totals, per campaign."""
    both = pd.concat([current[["campaign_id", *PERFORMANCE_TOTALS]],
                      delta[["campaign_id", *PERFORMANCE_TOTALS]]])
    return both.groupby("campaign_id", as_index=False).sum()


def campaign_total_deltas(sessions: pd.DataFrame) -> pd.DataFrame:
    """``campaign_totals`` on the driver, for the stream's signed session rows of one
    micro-batch (the stream == batch tests pin the two together)."""
    s = sessions[sessions["campaign_id"].notna()]
    sign = s["sign"].to_numpy(np.int64)
    rows = pd.DataFrame({"campaign_id": s["campaign_id"].to_numpy(), "sessions": sign,
                         "clicks": sign * s["clicks"].to_numpy(np.int64),
                         "purchases": np.where(s["purchases"].to_numpy(np.int64) > 0, sign, 0),
                         "revenue": sign * s["revenue"].to_numpy(np.float64)})
    return rows.groupby("campaign_id", as_index=False, sort=False).sum()
