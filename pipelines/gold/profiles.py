"""``gold/user_profile`` and ``gold/ip_profile``: per user, what their closed sessions and
fraud flags add up to; per IP hash, its closed sessions and the users seen on it.

Every column merges without history: counts and revenue add, ``first_seen`` is a minimum,
``last_seen`` and ``first_session_end`` a maximum or minimum, ``countries`` and ``users`` a set
union. So the gold stream MERGEs the deltas of the users and addresses a micro-batch touched
(the sessions it closed, the flags it raised) into the stored rows (``gold/apply.py``), and a
batch build aggregates all closed sessions and flags at once. ``profile_deltas`` and
``ip_deltas`` (Arrow, the stream) and ``user_profiles`` and ``ip_profiles`` (Spark, the batch
build) are the same definitions; the stream == batch tests hold them together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, keyed_lists, require_columns, string_lists
from pipelines.io.delta_rs import arrow_schema
from pipelines.tables import IP_PROFILE, USER_PROFILE

TIME = pa.timestamp("us", tz="UTC")  # the profiles' times, as Arrow types them


def profile_deltas(sessions: pd.DataFrame, flags: pd.DataFrame | None) -> pa.Table:
    """Closed ``gold/session_funnel`` rows and new ``gold/fraud_flags`` rows -> one row per
    user (typed as ``gold/user_profile``, sorted by user): sessions, purchase events, revenue,
    the first session's start, the last one's end, the countries seen, the flags raised on the
    user, and the earliest end of a session (``first_session_end``: a session that starts after
    it is a returning visit). Grouped in Arrow; a row without a user counts for none."""
    n = len(sessions)
    flagged = (flags.loc[flags["entity_type"] == "user", "entity_id"] if flags is not None
               else pd.Series([], dtype=object))
    m = len(flagged)
    starts, ends = _utc(sessions["session_start"]), _utc(sessions["session_end"])
    users = _strings(sessions["user_id"])
    rows = pa.table({
        "user_id": pa.concat_arrays([users, _strings(flagged)]),
        "first_seen": pa.concat_arrays([starts, pa.nulls(m, TIME)]),
        "last_seen": pa.concat_arrays([ends, pa.nulls(m, TIME)]),
        "sessions": np.concatenate([np.ones(n, np.int64), np.zeros(m, np.int64)]),
        "purchases": np.concatenate([sessions["purchases"].to_numpy(np.int64), np.zeros(m, np.int64)]),
        "revenue": np.concatenate([sessions["revenue"].to_numpy(np.float64), np.zeros(m)]),
        "fraud_flags": np.concatenate([np.zeros(n, np.int64), np.ones(m, np.int64)])})
    out = _grouped(rows, "user_id", [("first_seen", "min"), ("last_seen", "max"), ("sessions", "sum"),
                                     ("purchases", "sum"), ("revenue", "sum"), ("fraud_flags", "sum"),
                                     ("last_seen", "min")])
    countries = string_lists(sessions["countries"])
    at = pc.list_parent_indices(countries)
    out = out.append_column("countries",
                            keyed_lists(out["user_id"], users.take(at), pc.list_flatten(countries)))
    out = out.rename_columns(["user_id", "first_seen", "last_seen", "sessions", "purchases", "revenue",
                              "fraud_flags", "first_session_end", "countries"])
    return out.select(USER_PROFILE.columns).cast(arrow_schema(USER_PROFILE))


def ip_deltas(sessions: pd.DataFrame) -> pa.Table:
    """Closed ``gold/session_funnel`` rows -> one row per IP hash they used (typed as
    ``gold/ip_profile``, sorted by hash): sessions, the first start, the last end, and the
    users."""
    hashes = string_lists(sessions["ip_hashes"])
    at = pc.list_parent_indices(hashes)  # the session of each (session, hash) pair
    users = _strings(sessions["user_id"]).take(at)
    rows = pa.table({"ip_hash": pc.list_flatten(hashes), "user_id": users,
                     "first_seen": _utc(sessions["session_start"]).take(at),
                     "last_seen": _utc(sessions["session_end"]).take(at)})
    out = _grouped(rows, "ip_hash", [("first_seen", "min"), ("last_seen", "max"), ("ip_hash", "count")])
    out = out.append_column("users", keyed_lists(out["ip_hash"], rows["ip_hash"], rows["user_id"]))
    out = out.rename_columns(["ip_hash", "first_seen", "last_seen", "sessions", "users"])
    return out.cast(arrow_schema(IP_PROFILE))


def _utc(times: pd.Series) -> pa.Array:
    """Naive UTC (or zoned) times as Arrow ``timestamp[us, UTC]``, NaT as null."""
    times = pd.to_datetime(times, cache=False)  # its cache check builds Timestamps: 7-50 ms a call
    if times.dt.tz is not None:
        times = times.dt.tz_convert(None)
    return pa.array(times.to_numpy("datetime64[us]"), TIME, from_pandas=True)


def _strings(values: pd.Series) -> pa.Array:
    return pa.array(values.to_numpy(object), pa.string(), from_pandas=True)


def _grouped(rows: pa.Table, key: str, aggregations: list[tuple[str, str]]) -> pa.Table:
    """``rows`` grouped by ``key`` (rows without one left out), one column per aggregation
    in that order after the key, sorted by the key."""
    rows = rows.filter(pc.is_valid(rows[key]))
    out = rows.group_by(key, use_threads=False).aggregate(aggregations)
    out = out.select([key, *[f"{c}_{f}" for c, f in aggregations]])
    return out.sort_by(key)


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
