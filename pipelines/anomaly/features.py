"""Session features for the anomaly model: one pure pandas transform over ``gold/session_funnel``
rows, shared by training (``funnelhouse train``) and scoring (the gold stream).

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
]
LOG_SCALED = {"event_count", "adds", "purchases", "distinct_products", "duration_seconds",
              "events_per_minute", "seconds_between_events", "mean_item_price", "items_per_purchase"}

KEYS = ["session_id", "tracking_id", "user_id"]


def session_features(sessions: pd.DataFrame) -> pd.DataFrame:
    """``gold/session_funnel`` rows -> ``KEYS`` + ``FEATURES`` (floats), one row per session."""
    if sessions.empty:
        return pd.DataFrame(columns=KEYS + FEATURES)
    start = pd.to_datetime(sessions["session_start"], utc=True)
    end = pd.to_datetime(sessions["session_end"], utc=True)
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
    pairs = np.unique(row.astype(np.int64) * width + codes)
    return np.bincount(pairs // width, minlength=n).astype(float)
