"""Drop-off alerts: config rules evaluated on closed campaign funnel windows.

The rule has two forms, one per engine: ``dropoff_alerts`` in Spark for a batch build, and
``fire`` in Arrow, which the stream calls on its driver with the few cells its watermark just
closed (a Spark job per micro-batch cost more than the work). Tests hold them to the same rows.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import reduce

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.common import Transform, utc_now
from pipelines.config import DropoffRule
from pipelines.io.delta_rs import arrow_schema


def dropoff_alerts(rules: list[DropoffRule], gap: timedelta, watermark: datetime | None) -> Transform:
    """``gold/campaign_funnel`` -> ``gold/alerts`` rows for rules that fire (``fire`` says when).

    Only closed windows are judged: sessions that start in a window may go on for ``gap``
    after it, so a window is closed once ``window_end + gap <= watermark``.
    """
    def _(funnel: DataFrame) -> DataFrame:
        if watermark is None or not rules:
            return funnel.sparkSession.createDataFrame([], T.ALERTS.schema)
        closed = funnel.where(F.col("window_end") + F.expr(
            f"INTERVAL {int(gap.total_seconds())} SECONDS") <= F.lit(watermark))
        return reduce(DataFrame.unionByName, [_fire(closed, r) for r in rules])
    return _


def _fire(funnel: DataFrame, rule: DropoffRule) -> DataFrame:
    volume = F.col(f"reached_{rule.from_step}")
    value = F.col(f"reached_{rule.to_step}") / volume
    metric = f"{rule.from_step}->{rule.to_step}"
    hits = funnel.where((volume >= rule.min_volume) & (volume > 0) & (value < rule.min_conversion))
    return hits.select(
        F.sha2(F.concat_ws("|", F.lit(rule.name), "campaign_id",
                           F.col("window_start").cast("string")), 256).substr(1, 24).alias("alert_id"),
        F.lit("dropoff").alias("kind"),
        F.lit(rule.name).alias("rule"),
        "campaign_id", "window_start", "window_end",
        F.lit(metric).alias("metric"),
        value.cast("double").alias("value"),
        F.lit(rule.min_conversion).cast("double").alias("threshold"),
        volume.cast("long").alias("volume"),
        F.format_string(f"%s: {metric} conversion %.1f%% < {rule.min_conversion * 100:g}%% "
                        "over %d sessions (window %s)", "campaign_id", value * 100, volume,
                        F.date_format("window_start", "yyyy-MM-dd HH:mm")).alias("message"),
        F.current_timestamp().alias("created_at"),
    )


def fire(cells: pa.Table, rules: list[DropoffRule], now: datetime | None = None) -> pa.Table:
    """Closed campaign cells (``campaign_id``, ``window_start``, ``window_end`` and the
    ``reached_<step>`` counts the rules read) -> one alert row per rule that fires on a cell
    (``gold/alerts`` columns; ``created_at`` is ``now``).

    A rule fires when sessions at ``from_step`` >= ``min_volume`` (and > 0) and
    ``to_step / from_step`` < ``min_conversion``. ``alert_id`` is the first 24 hex digits of
    SHA-256 over ``rule|campaign_id|window_start`` (the start as Spark prints a timestamp),
    so each (rule, campaign, window) alerts at most once however often it is judged.
    """
    created = utc_now(now)
    rows, judged = [], cells.to_pylist()
    for rule in rules:
        metric = f"{rule.from_step}->{rule.to_step}"
        for cell in judged:
            volume, reached = cell[f"reached_{rule.from_step}"], cell[f"reached_{rule.to_step}"]
            if volume is None or reached is None or volume <= 0 or volume < rule.min_volume:
                continue
            value = reached / volume
            if not value < rule.min_conversion:
                continue
            start = _naive(cell["window_start"])
            rows.append({
                "alert_id": alert_id(rule.name, cell["campaign_id"], start), "kind": "dropoff",
                "rule": rule.name, "campaign_id": cell["campaign_id"], "window_start": start,
                "window_end": _naive(cell["window_end"]), "metric": metric, "value": value,
                "threshold": float(rule.min_conversion), "volume": int(volume),
                "message": (f"{cell['campaign_id']}: {metric} conversion {_percent(value)}% < "
                            f"{rule.min_conversion * 100:g}% over {int(volume)} sessions "
                            f"(window {start:%Y-%m-%d %H:%M})"),
                "created_at": created})
    return pa.Table.from_pylist(rows, schema=arrow_schema(T.ALERTS))


def alert_id(rule: str, campaign_id: str | None, window_start: datetime) -> str:
    text = window_start.strftime("%Y-%m-%d %H:%M:%S")
    if window_start.microsecond:  # Spark prints the fraction without trailing zeros
        text += f".{window_start.microsecond:06d}".rstrip("0")
    key = "|".join(p for p in (rule, campaign_id, text) if p is not None)  # concat_ws skips nulls
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _percent(value: float) -> str:
    """``value`` x 100 to one decimal, halves rounded up on the shortest decimal form of the
    double (as Java's ``%.1f`` does, which the messages were first written with)."""
    return str(Decimal(repr(value * 100)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t

