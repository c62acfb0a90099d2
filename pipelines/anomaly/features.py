"""Session features for the anomaly model: one pure pandas transform over ``gold/session_funnel``
rows, shared by training (``funnelhouse train``) and scoring (the gold stream).

Every feature is a number per closed session; docs/anomaly.md says what each catches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = [
    "event_count",          # events in the session
    "clicks",               # ad clicks
    "adds",                 # add_to_cart events
    "purchases",            # purchase events
    "items",                # units bought
    "revenue",              # money spent
    "funnel_level",         # deepest step reached (1-6)
    "distinct_products",    # products added or bought
    "countries",            # distinct countries the session's addresses are in
    "duration_seconds",     # last event - first event
    "events_per_minute",    # event_count over the duration (a floor of 1 s)
    "seconds_between_events",   # mean gap between consecutive events (0 for one event)
    "mean_item_price",      # revenue / items (0 without purchases)
    "cart_to_purchase",     # purchases / adds (0 without adds)
    "seconds_to_add_to_cart",   # from the session's first event; -1 when never reached
    "seconds_to_purchase",      # idem
]

KEYS = ["session_id", "tracking_id", "user_id"]


def session_features(sessions: pd.DataFrame) -> pd.DataFrame:
    """``gold/session_funnel`` rows -> ``KEYS`` + ``FEATURES`` (floats), one row per session."""
    if sessions.empty:
        return pd.DataFrame(columns=KEYS + FEATURES)
    start = pd.to_datetime(sessions["session_start"], utc=True)
    end = pd.to_datetime(sessions["session_end"], utc=True)
    duration = (end - start).dt.total_seconds().clip(lower=0).to_numpy()
    events = sessions["event_count"].astype(float).to_numpy()
    adds = sessions["adds"].astype(float).to_numpy()
    purchases = sessions["purchases"].astype(float).to_numpy()
    products = [len(set(_list(a)) | set(_list(b)))
                for a, b in zip(sessions["added_products"], sessions["purchased_products"], strict=True)]
    out = pd.DataFrame({k: sessions[k].to_numpy() for k in KEYS})
    for column in ("event_count", "clicks", "adds", "purchases", "items", "revenue", "funnel_level"):
        out[column] = sessions[column].astype(float).fillna(0.0).to_numpy()
    out["distinct_products"] = np.asarray(products, dtype=float)
    out["countries"] = np.asarray([len(_list(c)) for c in sessions["countries"]], dtype=float)
    out["duration_seconds"] = duration
    out["events_per_minute"] = events / (np.maximum(duration, 1.0) / 60.0)
    gaps = np.maximum(events - 1.0, 1.0)
    out["seconds_between_events"] = np.where(events > 1, duration / gaps, 0.0)
    items = out["items"].to_numpy()
    out["mean_item_price"] = np.divide(out["revenue"].to_numpy(), items, out=np.zeros_like(items),
                                       where=items > 0)
    out["cart_to_purchase"] = np.divide(purchases, adds, out=np.zeros_like(adds), where=adds > 0)
    for step in ("add_to_cart", "purchase"):
        out[f"seconds_to_{step}"] = sessions[f"seconds_to_{step}"].astype(float).fillna(-1.0).to_numpy()
    return out[KEYS + FEATURES]


def _list(value) -> list:
    return [] if value is None or (isinstance(value, float) and np.isnan(value)) else list(value)
