"""Retargeting offers: hand-built clicks and purchases, and the sample's truth."""

import json
from datetime import datetime, timedelta

from helpers import SAMPLE, read
from pyspark.sql import functions as F

from pipelines.config import load_settings
from pipelines.gold.build import offer_rows

T0 = datetime(2026, 11, 2, 10, 0)
COLS = "event_type string, event_time timestamp, user_id string, campaign_id string, tracking_id string"
TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())
NONE_SENT = "user_id string, campaign_id string, click_time timestamp"


def _offers(spark, rows, clock=T0 + timedelta(days=3), sent=()):
    """The offers due by ``clock``, through the batch path (the function the stream runs)."""
    s = load_settings(environ={}, local=False)
    events = spark.createDataFrame(rows, COLS)
    made = events.transform(offer_rows(s, clock, spark.createDataFrame(list(sent), NONE_SENT)))
    return sorted((r.user_id, r.campaign_id, r.click_time) for r in made.collect())


def click(minutes, user="u1", campaign="c1"):
    return ("ad_click", T0 + timedelta(minutes=minutes), user, campaign, f"t{minutes}")


def buy(minutes, user="u1", ms=0):
    return ("purchase", T0 + timedelta(minutes=minutes, milliseconds=ms), user, None, "tb")


def test_a_click_without_purchase_gets_one_offer_due_ten_minutes_later(spark):
    assert _offers(spark, [click(0)]) == [("u1", "c1", T0)]


def test_a_purchase_within_ten_minutes_cancels(spark):
    assert _offers(spark, [click(0), buy(10)]) == []  # exactly at click + 10 min: cancelled
    assert _offers(spark, [click(0), buy(10, ms=1)]) == [("u1", "c1", T0)]  # 1 ms too late
    assert _offers(spark, [click(0), buy(5, user="u2")]) == [("u1", "c1", T0)]  # someone else


def test_cooldown_per_user_and_campaign(spark):
    rows = [click(0), click(60), click(24 * 60), click(30, campaign="c2")]
    assert _offers(spark, rows) == [("u1", "c1", T0), ("u1", "c1", T0 + timedelta(days=1)),
                                    ("u1", "c2", T0 + timedelta(minutes=30))]
    # An offer already sent an hour before counts too.
    assert _offers(spark, [click(60)], sent=[("u1", "c1", T0)]) == []


def test_the_offer_id_is_user_campaign_and_click_time_to_the_microsecond(spark):
    s = load_settings(environ={}, local=False)
    rows = [click(0), ("ad_click", T0 + timedelta(days=1, seconds=5, milliseconds=7), "u2", "c9", "tx")]
    made = spark.createDataFrame(rows, COLS).transform(
        offer_rows(s, T0 + timedelta(days=3), spark.createDataFrame([], NONE_SENT)))
    assert sorted(r.offer_id for r in made.collect()) == [
        "u1|c1|2026-11-02T10:00:00.000000", "u2|c9|2026-11-03T10:00:05.007000"]


def test_not_due_before_the_clock_reaches_click_plus_wait(spark):
    assert _offers(spark, [click(0)], clock=T0 + timedelta(minutes=9, seconds=59)) == []


def test_the_sample_offers_match_the_generators_truth(spark, sample_lake):
    s = sample_lake
    silver = read(spark, s, "silver/events")
    late_users = {r.user_id for r in silver.where("late").select("user_id").distinct().collect()}
    watermark = silver.agg(F.max("event_time")).first()[0] - s.stream.watermark_delay
    wait = s.retarget.wait

    def due(click_time: datetime) -> bool:
        return click_time + wait <= watermark

    got = {(r.user_id, r.campaign_id, r.click_time) for r in read(spark, s, "gold/retarget_offers").collect()
           if r.user_id not in late_users}
    expected = {(o["user_id"], o["campaign_id"], datetime.fromisoformat(o["click_time"][:-1]))
                for o in TRUTH["retarget_offers"] if o["user_id"] not in late_users}
    expected = {o for o in expected if due(o[2])}
    assert got == expected
    assert len(expected) > 1000
