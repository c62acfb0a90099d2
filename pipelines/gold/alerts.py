"""Drop-off alerts: config rules evaluated on closed campaign funnel windows."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform
from pipelines.config import DropoffRule


def dropoff_alerts(rules: list[DropoffRule], gap: timedelta, watermark: datetime | None) -> Transform:
    """``gold/campaign_funnel`` -> ``gold/alerts`` rows for rules that fire.

    A rule fires for a campaign window when sessions at ``from_step`` >= ``min_volume`` and
    ``to_step / from_step`` < ``min_conversion``. Only closed windows are judged: sessions
    that start in a window may go on for ``gap`` after it, so a window is closed once
    ``window_end + gap <= watermark``. ``alert_id`` is deterministic (rule, campaign, window),
    so each alerts at most once however often it is evaluated.
    """
    def _(funnel: DataFrame) -> DataFrame:
        if watermark is None or not rules:
            return funnel.sparkSession.createDataFrame([], ALERT_COLUMNS_DDL)
        closed = funnel.where(F.col("window_end") + F.expr(
            f"INTERVAL {int(gap.total_seconds())} SECONDS") <= F.lit(watermark))
        fired = [_fire(closed, r) for r in rules]
        return reduce(DataFrame.unionByName, fired)
    return _


ALERT_COLUMNS_DDL = (
    "alert_id string, kind string, rule string, campaign_id string, window_start timestamp, "
    "window_end timestamp, metric string, value double, threshold double, volume long, "
    "message string, created_at timestamp"
)


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
