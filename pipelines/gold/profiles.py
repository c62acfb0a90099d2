"""``gold/user_profile`` and ``gold/ip_profile``: per user, what their closed sessions and
fraud flags add up to; per IP hash, its closed sessions and the users seen on it.

Every column merges without history: counts and revenue add, ``first_seen`` is a minimum,
``last_seen`` and ``first_session_end`` a maximum or minimum, ``countries`` and ``users`` a set
union. So the gold stream MERGEs the deltas of the users and addresses a micro-batch touched
(the sessions it closed, the flags it raised) into the stored rows (``gold/apply.py``), and a
batch build aggregates all closed sessions and flags at once. ``profile_deltas`` and
``ip_deltas`` (pandas, the stream) and ``user_profiles`` and ``ip_profiles`` (Spark, the batch
build) are the same definitions; the stream == batch tests hold them together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, require_columns
from pipelines.tables import IP_PROFILE, USER_PROFILE

ADDITIVE = ["sessions", "purchases", "revenue", "fraud_flags"]


def profile_deltas(sessions: pd.DataFrame, flags: pd.DataFrame | None) -> pd.DataFrame:
    """Closed ``gold/session_funnel`` rows and new ``gold/fraud_flags`` rows -> one row per
    user (``USER_PROFILE`` columns): sessions, purchase events, revenue, the first session's
    start, the last one's end, the countries seen, the flags raised on the user, and the
    earliest end of a session (``first_session_end``: a session that starts after it is a
    returning visit)."""
    per_session = pd.DataFrame({
        "user_id": sessions["user_id"].to_numpy(object),
        "first_seen": pd.to_datetime(sessions["session_start"]).to_numpy(),
        "last_seen": pd.to_datetime(sessions["session_end"]).to_numpy(),
        "sessions": np.ones(len(sessions), np.int64),
        "purchases": sessions["purchases"].to_numpy(np.int64),
        "revenue": sessions["revenue"].to_numpy(np.float64),
        "fraud_flags": np.zeros(len(sessions), np.int64),
        "countries": _lists(sessions["countries"])})
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
    out = rows.groupby("user_id", sort=True).agg(
        first_seen=("first_seen", "min"), last_seen=("last_seen", "max"), sessions=("sessions", "sum"),
        purchases=("purchases", "sum"), revenue=("revenue", "sum"), fraud_flags=("fraud_flags", "sum"),
        first_session_end=("last_seen", "min"))
    out["countries"] = _sets(rows["user_id"], rows["countries"]).reindex(out.index)
    return out.reset_index()[USER_PROFILE.columns]


def ip_deltas(sessions: pd.DataFrame) -> pd.DataFrame:
    """Closed ``gold/session_funnel`` rows -> one row per IP hash they used (``IP_PROFILE``
    columns): sessions, the first start, the last end, and the users."""
    per_ip = pd.DataFrame({"user_id": sessions["user_id"].to_numpy(object),
                           "first_seen": pd.to_datetime(sessions["session_start"]).to_numpy(),
                           "last_seen": pd.to_datetime(sessions["session_end"]).to_numpy(),
                           "ip_hash": _lists(sessions["ip_hashes"])})
    per_ip = per_ip.explode("ip_hash").dropna(subset="ip_hash")
    if per_ip.empty:
        return pd.DataFrame(columns=IP_PROFILE.columns)
    out = per_ip.groupby("ip_hash", sort=True).agg(
        first_seen=("first_seen", "min"), last_seen=("last_seen", "max"), sessions=("user_id", "size"))
    users = per_ip[["ip_hash", "user_id"]].drop_duplicates().sort_values(["ip_hash", "user_id"])
    out["users"] = users.groupby("ip_hash", sort=True)["user_id"].agg(list)
    return out.reset_index()[IP_PROFILE.columns]


def _lists(column: pd.Series) -> list[list]:
    return [list(v) if v is not None else [] for v in column]


def _sets(keys: pd.Series, lists: pd.Series) -> pd.Series:
    """Per key, the sorted distinct values of its rows' lists."""
    pairs = pd.DataFrame({"k": keys.to_numpy(object), "v": list(lists)}).explode("v").dropna()
    pairs = pairs.drop_duplicates().sort_values(["k", "v"])
    out = pairs.groupby("k", sort=True)["v"].agg(list)
    return out.reindex(pd.unique(keys.to_numpy(object))).map(lambda v: v if isinstance(v, list) else [])


def user_profiles(flags: DataFrame) -> Transform:
    """Sessions (``gold/session_funnel``; the closed ones count) and ``flags``
    (``gold/fraud_flags``) -> ``gold/user_profile``, one row per user. Grain: user_id."""
    def _(sessions: DataFrame) -> DataFrame:
        require_columns(sessions, "user_id", "session_start", "session_end", "purchases", "revenue",
                        "countries", "is_open")
        per_user = sessions.where(~F.col("is_open")).groupBy("user_id").agg(
            F.min("session_start").alias("first_seen"), F.max("session_end").alias("last_seen"),
            F.count(F.lit(1)).alias("sessions"), F.sum("purchases").alias("purchases"),
            F.sum("revenue").alias("revenue"), F.min("session_end").alias("first_session_end"),
            F.array_sort(F.array_distinct(F.flatten(F.collect_list("countries")))).alias("countries"))
        flagged = (flags.where(F.col("entity_type") == "user").groupBy(F.col("entity_id").alias("user_id"))
                   .agg(F.count(F.lit(1)).alias("fraud_flags")))
        both = per_user.join(flagged, "user_id", "full")
        return both.select(
            "user_id", "first_seen", "last_seen",
            *[F.coalesce(c, F.lit(0)).alias(c) for c in ("sessions", "purchases")],
            F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
            F.coalesce("fraud_flags", F.lit(0)).alias("fraud_flags"),
            F.coalesce("countries", F.array().cast("array<string>")).alias("countries"),
            "first_session_end")
    return _


def ip_profiles(sessions: DataFrame) -> DataFrame:
    """Sessions (``gold/session_funnel``; the closed ones count) -> ``gold/ip_profile``, one
    row per IP hash. Grain: ip_hash."""
    require_columns(sessions, "user_id", "session_start", "session_end", "ip_hashes", "is_open")
    used = sessions.where(~F.col("is_open")).select(
        "user_id", "session_start", "session_end", F.explode("ip_hashes").alias("ip_hash"))
    return used.groupBy("ip_hash").agg(
        F.min("session_start").alias("first_seen"), F.max("session_end").alias("last_seen"),
        F.count(F.lit(1)).alias("sessions"), F.array_sort(F.collect_set("user_id")).alias("users"))
