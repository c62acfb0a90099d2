"""The gold tables as functions of the settings: one per table, shared by stream and batch.

``build_gold`` composes them over a batch of silver events; the streaming job calls the same
functions on the sessions a micro-batch touched.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.common import Transform
from pipelines.config import Settings, spark_interval
from pipelines.gold.abandonment import product_abandonment
from pipelines.gold.alerts import dropoff_alerts
from pipelines.gold.campaigns import campaign_performance
from pipelines.gold.funnel import campaign_funnel, sessionize
from pipelines.gold.reminders import cart_reminders
from pipelines.gold.retarget import candidates, offers


def session_rows(s: Settings) -> Transform:
    """Silver events -> ``gold/session_funnel``."""
    def _(events: DataFrame) -> DataFrame:
        sessions = events.transform(sessionize(s.sessions.gap, s.sessions.attribution))
        return sessions.withColumn("session_date", F.to_date("session_start")).transform(
            T.conform(T.SESSION_FUNNEL))
    return _


def funnel_rows(s: Settings) -> Transform:
    """Sessions -> ``gold/campaign_funnel``."""
    return lambda sessions: sessions.transform(campaign_funnel(s.funnel.window)).transform(
        T.conform(T.CAMPAIGN_FUNNEL))


def performance_rows(s: Settings) -> Transform:
    """Sessions -> ``gold/campaign_performance``."""
    return lambda sessions: sessions.transform(campaign_performance()).transform(
        T.conform(T.CAMPAIGN_PERFORMANCE))


def product_rows(s: Settings) -> Transform:
    """Sessions -> ``gold/product_abandonment``."""
    return lambda sessions: sessions.transform(product_abandonment()).transform(
        T.conform(T.PRODUCT_ABANDONMENT))


def alert_rows(s: Settings, watermark: datetime | None) -> Transform:
    """Campaign funnel -> ``gold/alerts``."""
    return lambda funnel: funnel.transform(
        dropoff_alerts(s.funnel.dropoff_rules, s.sessions.gap, watermark)).transform(T.conform(T.ALERTS))


def reminder_rows(s: Settings, watermark: datetime | None) -> Transform:
    """Sessions -> ``gold/cart_reminders``."""
    return lambda sessions: sessions.transform(
        cart_reminders(s.reminders.min_adds, s.sessions.gap, watermark)).transform(
        T.conform(T.CART_REMINDERS))


def offer_rows(events: DataFrame, sent: DataFrame, s: Settings, due_after: datetime | None,
               due_until: datetime) -> DataFrame:
    """Silver events -> new ``gold/retarget_offers`` due in ``(due_after, due_until]``, given
    the offers already ``sent`` (for the cooldown)."""
    r = s.retarget
    cands = events.transform(candidates(r.wait, due_after, due_until))
    return (offers(cands, sent, r.cooldown, r.buckets)
            .withColumn("created_at", F.current_timestamp()).transform(T.conform(T.RETARGET_OFFERS)))


def window_of(col: str, s: Settings) -> F.Column:
    """The start of the funnel window that holds timestamp ``col``."""
    return F.window(col, spark_interval(s.funnel.window)).start


def event_watermark(events: DataFrame, s: Settings) -> datetime | None:
    """max(event_time) - watermark delay, as the stream computes it."""
    latest = events.agg(F.max("event_time")).first()[0]
    return latest - s.stream.watermark_delay if latest else None


def build_gold(events: DataFrame, s: Settings, watermark: datetime | None = None) -> dict[str, DataFrame]:
    """Every gold table from a batch of silver events (what a backfill writes)."""
    watermark = watermark if watermark is not None else event_watermark(events, s)
    sessions = events.transform(session_rows(s))
    funnel = sessions.transform(funnel_rows(s))
    return {
        T.SESSION_FUNNEL.name: sessions,
        T.CAMPAIGN_FUNNEL.name: funnel,
        T.CAMPAIGN_PERFORMANCE.name: sessions.transform(performance_rows(s)),
        T.PRODUCT_ABANDONMENT.name: sessions.transform(product_rows(s)),
        T.ALERTS.name: funnel.transform(alert_rows(s, watermark)),
        T.CART_REMINDERS.name: sessions.transform(reminder_rows(s, watermark)),
        T.RETARGET_OFFERS.name: _all_offers(events, s, watermark),
    }


def _all_offers(events: DataFrame, s: Settings, watermark: datetime | None) -> DataFrame:
    if watermark is None:
        return events.sparkSession.createDataFrame([], T.RETARGET_OFFERS.schema)
    none_sent = events.sparkSession.createDataFrame([], "user_id string, campaign_id string, "
                                                        "click_time timestamp")
    return offer_rows(events, none_sent, s, None, watermark)
