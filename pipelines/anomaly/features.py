"""Session features for the anomaly model: pure pandas transforms over ``gold/session_funnel``
rows, shared by training (``funnelhouse train``), the backfill and scoring (the gold stream).

``with_history`` adds what the user's and the address's past say (``returning``,
``ip_users``); ``session_features`` turns a session row with its history into numbers. The
history of a session is defined on closed sessions alone, so the stream (which knows the
stored profiles plus the sessions its micro-batch closes) and a batch over the whole table
compute the same value: every session that ended before a session S started, or ended no
later than S, closes no later than S does.

Every feature is a number per closed session; docs/anomaly.md says what each catches. Shapes
and rates rather than sizes: a big, slow, honest basket is rare but not suspicious, while a
burst of adds in a second is. The heavy-tailed ones (``LOG_SCALED``) are ``log1p``-scaled, so
the isolation forest's random cuts spread over orders of magnitude instead of over the few
largest normal sessions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FEATURES = [
    "event_count",             # events in the session
    "adds",                    # add_to_cart events
    "purchases",               # purchase events
    "funnel_level",            # deepest step reached in order (0-6; 0 without an ad impression)
    "distinct_products",       # products added or bought
    "countries",               # distinct countries of the session's addresses
    "duration_seconds",        # last event - first event
    "events_per_minute",       # event_count over the duration (a floor of 1 s)
    "seconds_between_events",  # mean gap between consecutive events (0 for one event)
    "mean_item_price",         # revenue / items (0 without purchases)
    "items_per_purchase",      # items / purchase events (0 without purchases)
    "cart_to_purchase",        # purchases / adds (0 without adds)
    "returning",               # 1 when a session of the same user ended before this one started
    "ip_users",                # most users seen on one of the session's addresses, up to its end
]
HISTORY = ["returning", "ip_users"]
LOG_SCALED = {"event_count", "adds", "purchases", "distinct_products", "duration_seconds",
              "events_per_minute", "seconds_between_events", "mean_item_price", "items_per_purchase",
              "ip_users"}

KEYS = ["session_id", "tracking_id", "user_id"]


def with_history(sessions: pd.DataFrame, users: pd.DataFrame | None = None,
                 ips: pd.DataFrame | None = None) -> pd.DataFrame:
    """Closed ``gold/session_funnel`` rows -> the same rows with ``HISTORY``:

    - ``returning``: some session of the user ended before this one started;
    - ``ip_users``: the most distinct users, over the session's ``ip_hashes``, whose sessions on
      that address ended no later than this one (its own user included; 0 without an address).

    Over the rows themselves, plus, in the stream, what earlier batches stored: ``users``
    (``gold/user_profile`` rows: ``user_id``, ``first_session_end``) and ``ips``
    (``gold/ip_profile`` rows: ``ip_hash``, ``users``), read before this batch's MERGE."""
    out = sessions.copy()
    if out.empty:
        return out.assign(returning=pd.Series(dtype=float), ip_users=pd.Series(dtype=float))
    user = out["user_id"].to_numpy(object)
    start, end = _us(out["session_start"]), _us(out["session_end"])
    first_end = pd.Series(end).groupby(user).transform("min").to_numpy()
    if users is not None and len(users):
        stored = pd.Series(_us(users["first_session_end"]), index=users["user_id"].to_numpy(object))
        first_end = np.fmin(first_end, pd.Series(user).map(stored).to_numpy(float))
    out["returning"] = (first_end < start).astype(float)
    out["ip_users"] = _ip_users(out, end, ips)
    return out


def _ip_users(sessions: pd.DataFrame, end: np.ndarray, ips: pd.DataFrame | None) -> np.ndarray:
    lists = pa.array(sessions["ip_hashes"], type=pa.list_(pa.string()), from_pandas=True)
    row = pc.list_parent_indices(lists).to_numpy()
    uses = pd.DataFrame({"row": row, "ip": pc.list_flatten(lists).to_numpy(zero_copy_only=False),
                         "user": sessions["user_id"].to_numpy(object)[row], "end": end[row]})
    best = np.zeros(len(sessions))
    if uses.empty:
        return best
    known = pd.Series(0, index=pd.Index([], dtype=object))
    if ips is not None and len(ips):
        stored = ips[["ip_hash", "users"]].explode("users").dropna()
        known = stored.groupby("ip_hash").size()
        seen = pd.MultiIndex.from_frame(stored.rename(columns={"ip_hash": "ip", "users": "user"}))
        uses_new = uses[~pd.MultiIndex.from_frame(uses[["ip", "user"]]).isin(seen)]
    else:
        uses_new = uses
    firsts = uses_new.groupby(["ip", "user"], sort=False)["end"].min().reset_index()
    # Per (session, address): the users whose first session on the address ended by this one's
    # end. Both lists sorted by (address, time), a user's first end before a query at a tie.
    ip = np.concatenate([firsts["ip"].to_numpy(object), uses["ip"].to_numpy(object)])
    t = np.concatenate([firsts["end"].to_numpy(float), uses["end"].to_numpy(float)])
    is_query = np.r_[np.zeros(len(firsts), bool), np.ones(len(uses), bool)]
    code = pd.factorize(ip)[0]
    order = np.lexsort((is_query, t, code))
    counted = pd.Series(~is_query[order]).groupby(code[order]).cumsum().to_numpy()
    at = np.empty(len(order), np.int64)
    at[order] = counted
    per_use = at[len(firsts):] + uses["ip"].map(known).fillna(0).to_numpy()
    np.maximum.at(best, uses["row"].to_numpy(), per_use)
    return best


def _us(times: pd.Series) -> np.ndarray:
    """Times (naive UTC or zoned) -> epoch microseconds as floats (exact), NaN for none."""
    t = pd.to_datetime(times, utc=True, cache=False)
    us = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    return us.to_numpy(dtype=float, na_value=np.nan)


def session_features(sessions: pd.DataFrame) -> pd.DataFrame:
    """``gold/session_funnel`` rows with ``HISTORY`` (``with_history``) -> ``KEYS`` +
    ``FEATURES`` (floats), one row per session."""
    if sessions.empty:
        return pd.DataFrame(columns=KEYS + FEATURES)
    start = pd.to_datetime(sessions["session_start"], utc=True, cache=False)
    end = pd.to_datetime(sessions["session_end"], utc=True, cache=False)
    duration = (end - start).dt.total_seconds().clip(lower=0).to_numpy()
    counts = {c: sessions[c].astype(float).fillna(0.0).to_numpy()
              for c in ("event_count", "adds", "purchases", "items", "revenue", "funnel_level")}
    events, adds, purchases, items = (counts[c] for c in ("event_count", "adds", "purchases", "items"))
    raw = {
        "event_count": events, "adds": adds, "purchases": purchases, "funnel_level": counts["funnel_level"],
        "distinct_products": _distinct(sessions["added_products"], sessions["purchased_products"]),
        "countries": _distinct(sessions["countries"]),
        "duration_seconds": duration,
        "events_per_minute": events / (np.maximum(duration, 1.0) / 60.0),
        "seconds_between_events": np.where(events > 1, duration / np.maximum(events - 1.0, 1.0), 0.0),
        "mean_item_price": _ratio(counts["revenue"], items),
        "items_per_purchase": _ratio(items, purchases),
        "cart_to_purchase": _ratio(purchases, adds),
        "returning": sessions["returning"].to_numpy(float),
        "ip_users": sessions["ip_users"].to_numpy(float),
    }
    out = pd.DataFrame({k: sessions[k].to_numpy() for k in KEYS})
    for name in FEATURES:
        out[name] = np.log1p(raw[name]) if name in LOG_SCALED else raw[name]
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _distinct(*columns: pd.Series) -> np.ndarray:
    """Per row, how many distinct values the row's lists in ``columns`` hold together (a null
    list holds none). Vectorised through Arrow: no Python work per row."""
    n = len(columns[0])
    lists = [pa.array(c, type=pa.list_(pa.string()), from_pandas=True) for c in columns]
    row = np.concatenate([pc.list_parent_indices(a).to_numpy() for a in lists])
    value = np.concatenate([pc.list_flatten(a).to_numpy(zero_copy_only=False) for a in lists])
    codes, uniques = pd.factorize(value)
    width = max(len(uniques), 1)
    pairs = pd.unique(row.astype(np.int64) * width + codes)  # hashed: numpy 2's np.unique is ~40x slower
    return np.bincount(pairs // width, minlength=n).astype(float)
