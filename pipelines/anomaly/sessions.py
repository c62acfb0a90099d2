"""What training and the backfill score: the closed sessions of a date range, each with its
history (``features.with_history``) computed over every closed session up to the range's end,
as the stream knows it when the session closes."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from pipelines import tables as T
from pipelines.anomaly.features import with_history
from pipelines.io.delta_rs import read


class EmptyRange(ValueError):
    pass


def closed_sessions(lake_table: str, start: date | None, end: date | None) -> pd.DataFrame:
    """``gold/session_funnel`` at ``lake_table``: its closed sessions that start in [start,
    end] (either open-ended), with ``HISTORY``. Raises ``EmptyRange`` without the table."""
    if not Path(lake_table, "_delta_log").is_dir():
        raise EmptyRange(f"no {T.SESSION_FUNNEL.name} at {lake_table}: run `funnelhouse run` first")
    filters = [("is_open", "=", False)] + ([("session_date", "<=", end)] if end else [])
    sessions = with_history(read(lake_table, filters).to_pandas())
    if start:
        sessions = sessions[sessions["session_date"] >= start].reset_index(drop=True)
    return sessions
