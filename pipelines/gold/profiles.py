"""``gold/user_profile``: per user, what their closed sessions and fraud flags add up to.

Every column merges without history: counts and revenue add, ``first_seen`` is a minimum,
``last_seen`` a maximum, ``countries`` a set union. So the gold stream MERGEs the deltas of
the users a micro-batch touched (the sessions it closed, the flags it raised) into the stored
rows (``gold/apply.py``), and a batch build aggregates all closed sessions and flags at once.
``profile_deltas`` (pandas, the stream) and ``user_profiles`` (Spark, the batch build) are
the same definition; the stream == batch tests hold them together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, require_columns
from pipelines.tables import USER_PROFILE

ADDITIVE = ["sessions", "purchases", "revenue", "fraud_flags"]


def profile_deltas(sessions: pd.DataFrame, flags: pd.DataFrame | None) -> pd.DataFrame:
    """Closed ``gold/session_funnel`` rows and new ``gold/fraud_flags`` rows -> one row per
    user (``USER_PROFILE`` columns): sessions, purchase events, revenue, the first session's
    start, the last one's end, the countries seen, and the flags raised on the user."""
    per_session = pd.DataFrame({
        "user_id": sessions["user_id"].to_numpy(object),
        "first_seen": pd.to_datetime(sessions["session_start"]).to_numpy(),
        "last_seen": pd.to_datetime(sessions["session_end"]).to_numpy(),
        "sessions": np.ones(len(sessions), np.int64),
        "purchases": sessions["purchases"].to_numpy(np.int64),
        "revenue": sessions["revenue"].to_numpy(np.float64),
        "fraud_flags": np.zeros(len(sessions), np.int64),
        "countries": [list(c) if c is not None else [] for c in sessions["countries"]]})
    parts = [per_session]
    if flags is not None and len(flags):
        on_users = flags[flags["entity_type"] == "user"]
        parts.append(pd.DataFrame({
            "user_id": on_users["entity_id"].to_numpy(object), "first_seen": pd.NaT, "last_seen": pd.NaT,
            "sessions": 0, "purchases": 0, "revenue": 0.0, "fraud_flags": 1,
            "countries": [[] for _ in range(len(on_users))]}))
    parts = [p for p in parts if len(p)]
    if not parts:  # no session closed and no user flagged (an IP flag alone)
        return pd.DataFrame(columns=USER_PROFILE.columns)
    rows = pd.concat(parts, ignore_index=True)
    grouped = rows.groupby("user_id", sort=True)
    out = grouped.agg(first_seen=("first_seen", "min"), last_seen=("last_seen", "max"),
                      sessions=("sessions", "sum"), purchases=("purchases", "sum"),
                      revenue=("revenue", "sum"), fraud_flags=("fraud_flags", "sum"))
    out["countries"] = grouped["countries"].agg(lambda lists: sorted({c for cs in lists for c in cs}))
    return out.reset_index()[USER_PROFILE.columns]


def user_profiles(flags: DataFrame) -> Transform:
    """Sessions (``gold/session_funnel``; the closed ones count) and ``flags``
    (``gold/fraud_flags``) -> ``gold/user_profile``, one row per user. Grain: user_id."""
    def _(sessions: DataFrame) -> DataFrame:
        require_columns(sessions, "user_id", "session_start", "session_end", "purchases", "revenue",
                        "countries", "is_open")
        per_user = sessions.where(~F.col("is_open")).groupBy("user_id").agg(
            F.min("session_start").alias("first_seen"), F.max("session_end").alias("last_seen"),
            F.count(F.lit(1)).alias("sessions"), F.sum("purchases").alias("purchases"),
            F.sum("revenue").alias("revenue"),
            F.array_sort(F.array_distinct(F.flatten(F.collect_list("countries")))).alias("countries"))
        flagged = (flags.where(F.col("entity_type") == "user").groupBy(F.col("entity_id").alias("user_id"))
                   .agg(F.count(F.lit(1)).alias("fraud_flags")))
        both = per_user.join(flagged, "user_id", "full")
        return both.select(
            "user_id", "first_seen", "last_seen",
            *[F.coalesce(c, F.lit(0)).alias(c) for c in ("sessions", "purchases")],
            F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
            F.coalesce("fraud_flags", F.lit(0)).alias("fraud_flags"),
            F.coalesce("countries", F.array().cast("array<string>")).alias("countries"))
    return _
