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
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, require_columns, string_lists
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
        "countries": sessions["countries"].reset_index(drop=True)})
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
    hashes = string_lists(sessions["ip_hashes"])
    at = pc.list_parent_indices(hashes).to_numpy()  # the session of each (session, hash) pair
    per_ip = pd.DataFrame({"ip_hash": pc.list_flatten(hashes).to_numpy(zero_copy_only=False),
                           "user_id": sessions["user_id"].to_numpy(object)[at],
                           "first_seen": pd.to_datetime(sessions["session_start"]).to_numpy()[at],
                           "last_seen": pd.to_datetime(sessions["session_end"]).to_numpy()[at]})
    per_ip = per_ip.dropna(subset="ip_hash")
    if per_ip.empty:
        return pd.DataFrame(columns=IP_PROFILE.columns)
    out = per_ip.groupby("ip_hash", sort=True).agg(
        first_seen=("first_seen", "min"), last_seen=("last_seen", "max"), sessions=("user_id", "size"))
    out["users"] = _distinct_sorted(per_ip["ip_hash"], per_ip["user_id"])
    return out.reset_index()[IP_PROFILE.columns]


def _sets(keys: pd.Series, lists: pd.Series) -> pd.Series:
    """Per key (in order of first appearance), the sorted distinct values of its rows' lists."""
    values = string_lists(lists)
    at = pc.list_parent_indices(values).to_numpy()
    keys = keys.to_numpy(object)
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    found = _distinct_sorted(pd.Series(keys[at]), pd.Series(flat))
    out = found.reindex(pd.unique(keys))
    empty = out.isna().to_numpy()  # keys whose lists were all empty
    if empty.any():
        out[empty] = pd.Series([[] for _ in range(int(empty.sum()))], index=out.index[empty], dtype=object)
    return out


def _distinct_sorted(keys: pd.Series, values: pd.Series) -> pd.Series:
    """Per key (sorted), the sorted distinct non-null values paired with it, as a list:
    grouped in Arrow (a pandas ``groupby(...).agg(list)`` is a Python call per key)."""
    pairs = pa.table({"k": pa.array(keys.to_numpy(object), pa.string()),
                      "v": pa.array(values.to_numpy(object), pa.string())})
    pairs = pairs.filter(pc.is_valid(pairs["v"])).group_by(["k", "v"]).aggregate([])
    pairs = pairs.sort_by([("k", "ascending"), ("v", "ascending")])
    grouped = pairs.group_by("k", use_threads=False).aggregate([("v", "list")])  # keeps the order
    return pd.Series(grouped["v_list"].to_pylist(), index=pd.Index(grouped["k"].to_pylist(), name="k"),
                     dtype=object)


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
