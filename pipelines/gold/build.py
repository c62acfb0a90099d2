"""The gold tables as functions of the settings: one per table, shared by stream and batch.

``build_gold`` composes them over a batch of on-time silver events (what a backfill writes and
what the tests compare the stream with). The stream computes the same rows incrementally: its
session processor calls ``sessionize`` on the journeys a micro-batch touched, and the
aggregates below add its signed session changes (``gold/apply.py``).
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.common import Transform
from pipelines.config import Settings
from pipelines.gold.abandonment import product_abandonment
from pipelines.gold.alerts import dropoff_alerts
from pipelines.gold.campaigns import campaign_totals, performance
from pipelines.gold.funnel import campaign_funnel
from pipelines.gold.profiles import ip_profiles, user_profiles
from pipelines.gold.reminders import cart_reminders
from pipelines.gold.retarget import batch_offers, to_offer_rows
from pipelines.gold.sessions import batch_sessions, to_session_rows
from pipelines.silver import event_watermark
from pipelines.stateful.fraud import fraud_flags_batch


def session_rows(s: Settings, watermark: datetime | None) -> Transform:
    """On-time silver events -> ``gold/session_funnel`` (``is_open`` by ``watermark``)."""
    g = s.sessions
    return lambda events: (events.transform(batch_sessions(g.gap, g.attribution, s.gold.buckets))
                           .transform(to_session_rows(g.gap, watermark))
                           .transform(T.conform(T.SESSION_FUNNEL)))


def held_open(held: DataFrame | None) -> Transform:
    """Session rows -> the same, an open one written closed unless the stream holds its
    journey open (``held``: those ``tracking_id``s; None: no stream, all kept as they are).
    The stream closes only the sessions its state holds; one built from events it skipped as
    late (a backfill's silver step takes them in) would otherwise stay open for good."""
    def _(rows: DataFrame) -> DataFrame:
        if held is None:
            return rows
        marks = held.select("tracking_id", F.lit(True).alias("_held"))
        still = F.col("is_open") & F.coalesce(F.col("_held"), F.lit(False))
        return (rows.join(F.broadcast(marks), "tracking_id", "left")
                .withColumn("is_open", still).withColumn("open_slot", F.when(still, F.col("open_slot")))
                .select(rows.columns))
    return _


def funnel_rows(s: Settings, watermark: datetime | None) -> Transform:
    """Sessions -> ``gold/campaign_funnel``."""
    return lambda sessions: sessions.transform(
        campaign_funnel(s.funnel.window, s.sessions.gap, watermark)).transform(T.conform(T.CAMPAIGN_FUNNEL))


def performance_rows(s: Settings) -> Transform:
    """Sessions -> ``gold/campaign_performance`` (totals in Spark, shares over all campaigns)."""
    def _(sessions: DataFrame) -> DataFrame:
        spark = sessions.sparkSession
        totals = sessions.transform(campaign_totals()).toPandas()
        if totals.empty:
            return spark.createDataFrame([], T.CAMPAIGN_PERFORMANCE.schema)
        return spark.createDataFrame(performance(totals), T.CAMPAIGN_PERFORMANCE.schema)
    return _


def product_rows(s: Settings) -> Transform:
    """Sessions -> ``gold/product_abandonment``."""
    return lambda sessions: sessions.transform(product_abandonment()).transform(
        T.conform(T.PRODUCT_ABANDONMENT))


def alert_rows(s: Settings, watermark: datetime | None) -> Transform:
    """Campaign funnel -> ``gold/alerts`` for the windows the watermark has closed."""
    return lambda funnel: funnel.transform(
        dropoff_alerts(s.funnel.dropoff_rules, s.sessions.gap, watermark)).transform(T.conform(T.ALERTS))


def reminder_rows(s: Settings) -> Transform:
    """Sessions -> ``gold/cart_reminders`` (closed sessions only)."""
    return lambda sessions: sessions.transform(cart_reminders(s.reminders.min_adds)).transform(
        T.conform(T.CART_REMINDERS))


def offer_rows(s: Settings, watermark: datetime | None, sent: DataFrame | None = None) -> Transform:
    """On-time silver events -> ``gold/retarget_offers`` due by ``watermark``, after ``sent``."""
    r = s.retarget
    return lambda events: (events.transform(batch_offers(r.wait, r.cooldown, r.buckets, watermark, sent))
                           .transform(to_offer_rows()).transform(T.conform(T.RETARGET_OFFERS)))


def flag_rows(s: Settings, watermark: datetime | None) -> Transform:
    """On-time silver events -> ``gold/fraud_flags`` of the bursts closed by ``watermark``."""
    return lambda events: fraud_flags_batch(events, s.fraud, watermark).transform(
        T.conform(T.FRAUD_FLAGS))


def profile_rows(flags: DataFrame) -> Transform:
    """Sessions and ``flags`` (``gold/fraud_flags``) -> ``gold/user_profile``."""
    return lambda sessions: sessions.transform(user_profiles(flags)).transform(T.conform(T.USER_PROFILE))


def ip_profile_rows(sessions: DataFrame) -> DataFrame:
    """Sessions -> ``gold/ip_profile``."""
    return sessions.transform(ip_profiles).transform(T.conform(T.IP_PROFILE))


def latest_event_time(events: DataFrame) -> datetime | None:
    return events.agg(F.max("event_time")).first()[0]


def build_gold(events: DataFrame, s: Settings, watermark: datetime | None = None) -> dict[str, DataFrame]:
    """Every gold table from a batch of on-time silver events, as the stream would hold them
    once its watermark reached ``watermark`` (default: the events' own, ``event_watermark``)."""
    if watermark is None:
        watermark = event_watermark(latest_event_time(events), s.stream.watermark_delay)
    sessions = events.transform(session_rows(s, watermark))
    funnel = sessions.transform(funnel_rows(s, watermark))
    flags = events.transform(flag_rows(s, watermark))
    return {
        T.SESSION_FUNNEL.name: sessions,
        T.CAMPAIGN_FUNNEL.name: funnel,
        T.CAMPAIGN_PERFORMANCE.name: sessions.transform(performance_rows(s)),
        T.PRODUCT_ABANDONMENT.name: sessions.transform(product_rows(s)),
        T.ALERTS.name: funnel.transform(alert_rows(s, watermark)),
        T.CART_REMINDERS.name: sessions.transform(reminder_rows(s)),
        T.RETARGET_OFFERS.name: events.transform(offer_rows(s, watermark)),
        T.FRAUD_FLAGS.name: flags,
        T.USER_PROFILE.name: sessions.transform(profile_rows(flags)),
        T.IP_PROFILE.name: sessions.transform(ip_profile_rows),
    }
