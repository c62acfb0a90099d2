"""Sessions and funnels on hand-built events: every expected value is written by hand."""

from datetime import datetime, timedelta

import pytest

from pipelines.gold.funnel import campaign_funnel, sessionize

GAP = timedelta(minutes=30)
T0 = datetime(2026, 11, 2, 10, 0, 0)
STEP = {"ad_impression": 1, "ad_click": 2, "landing_page_view": 3, "add_to_cart": 4,
        "checkout_start": 5, "purchase": 6}
COLS = ("event_id string, event_type string, step int, event_time timestamp, user_id string, "
        "tracking_id string, campaign_id string, product_id string, price double, quantity int")


def ev(spark_rows: list, etype: str, seconds: float, tid: str = "t1", campaign: str | None = None,
       product: str | None = None, price: float | None = None, qty: int | None = None,
       user: str = "u1") -> None:
    spark_rows.append((f"e{len(spark_rows)}", etype, STEP[etype], T0 + timedelta(seconds=seconds),
                       user, tid, campaign, product, price, qty))


def sessions_of(spark, rows, attribution="first_touch"):
    df = spark.createDataFrame(rows, COLS).transform(sessionize(GAP, attribution))
    return {(r.tracking_id, r.session_start): r for r in df.collect()}


def only(sessions):
    assert len(sessions) == 1
    return next(iter(sessions.values()))


def test_full_journey_reaches_level_six_with_times_to_convert(spark):
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 10, campaign="c1")
    ev(rows, "landing_page_view", 12)
    ev(rows, "add_to_cart", 60, product="p1", price=10.0, qty=2)
    ev(rows, "add_to_cart", 70, product="p2", price=5.0, qty=1)
    ev(rows, "checkout_start", 100, product="p1", price=10.0, qty=2)
    ev(rows, "purchase", 130, product="p1", price=10.0, qty=2)
    s = only(sessions_of(spark, rows))
    assert (s.funnel_level, s.campaign_id, s.user_id) == (6, "c1", "u1")
    assert (s.seconds_to_ad_click, s.seconds_to_add_to_cart, s.seconds_to_purchase) == (10, 60, 130)
    assert (s.clicks, s.purchases, s.items, s.revenue) == (1, 1, 2, 20.0)
    assert s.added_products == ["p1", "p2"] and s.purchased_products == ["p1"]
    assert (s.session_start, s.session_end) == (T0, T0 + timedelta(seconds=130))


def test_a_skipped_step_stops_the_level(spark):
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 5, campaign="c1")
    ev(rows, "add_to_cart", 20, product="p1", price=1.0, qty=1)  # no landing page view
    ev(rows, "purchase", 40, product="p1", price=1.0, qty=1)
    s = only(sessions_of(spark, rows))
    assert s.funnel_level == 2
    assert s.seconds_to_add_to_cart is None
    assert s.purchases == 1  # the purchase still counts as revenue, not as funnel progress


def test_out_of_order_arrival_is_ordered_by_event_time(spark):
    rows: list = []
    ev(rows, "landing_page_view", 20)  # delivered first, happened third
    ev(rows, "ad_click", 10, campaign="c1")
    ev(rows, "ad_impression", 0, campaign="c1")
    assert only(sessions_of(spark, rows)).funnel_level == 3


def test_steps_in_the_wrong_time_order_do_not_count(spark):
    rows: list = []
    ev(rows, "ad_click", 0, campaign="c1")
    ev(rows, "ad_impression", 5, campaign="c1")
    ev(rows, "landing_page_view", 10)
    assert only(sessions_of(spark, rows)).funnel_level == 1  # impression after the click


def test_equal_timestamps_are_ordered_by_step_index(spark):
    rows: list = []
    ev(rows, "ad_click", 0, campaign="c1")
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "landing_page_view", 0)
    assert only(sessions_of(spark, rows)).funnel_level == 3


def test_a_gap_longer_than_the_session_gap_splits_sessions(spark):
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 60, campaign="c1")
    ev(rows, "ad_impression", 60 + 30 * 60 + 1, campaign="c2")  # 30 min 1 s later
    ev(rows, "ad_click", 60 + 30 * 60 + 5, campaign="c2")
    ev(rows, "landing_page_view", 60 + 30 * 60 + 9)
    got = sessions_of(spark, rows)
    first = got[("t1", T0)]
    second = got[("t1", T0 + timedelta(seconds=1861))]
    assert (first.funnel_level, first.campaign_id) == (2, "c1")
    assert (second.funnel_level, second.campaign_id) == (3, "c2")


def test_a_gap_of_exactly_the_session_gap_keeps_one_session(spark):
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 30 * 60, campaign="c1")
    assert only(sessions_of(spark, rows)).funnel_level == 2


def test_a_session_without_ad_events_is_organic(spark):
    rows: list = []
    ev(rows, "landing_page_view", 0)
    ev(rows, "add_to_cart", 10, product="p1", price=3.0, qty=1)
    s = only(sessions_of(spark, rows))
    assert (s.campaign_id, s.funnel_level, s.clicks) == (None, 0, 0)


@pytest.mark.parametrize(("attribution", "campaign"), [("first_touch", "c1"), ("last_touch", "c2")])
def test_first_and_last_touch(spark, attribution, campaign):
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 5, campaign="c2")
    ev(rows, "landing_page_view", 8, campaign="c3")  # not an ad event: never attributed
    assert only(sessions_of(spark, rows, attribution)).campaign_id == campaign


def _funnel_rows(spark, journeys: list[tuple[str, int]]):
    """Sessions per (campaign, level) -> campaign_funnel rows, keyed by campaign."""
    rows = [(f"t{i}", T0 + timedelta(minutes=i % 50), c, level)
            for i, (c, level) in enumerate(journeys)]
    sessions = spark.createDataFrame(rows, "tracking_id string, session_start timestamp, "
                                           "campaign_id string, funnel_level int")
    return {r.campaign_id: r for r in sessions.transform(campaign_funnel(timedelta(hours=1))).collect()}


def test_campaign_funnel_counts_sessions_reaching_each_step(spark):
    journeys = [("c1", 6)] * 2 + [("c1", 4)] + [("c1", 2)] * 3 + [("c1", 1)] * 4 + [(None, 0)]
    r = _funnel_rows(spark, journeys)["c1"]
    assert (r.sessions, r.reached_ad_impression, r.reached_ad_click, r.reached_landing_page_view,
            r.reached_add_to_cart, r.reached_checkout_start, r.reached_purchase) == (10, 10, 6, 3, 3, 2, 2)
    assert r.conversion_ad_click == pytest.approx(0.6)
    assert r.conversion_landing_page_view == pytest.approx(0.5)
    assert r.conversion_add_to_cart == pytest.approx(1.0)
    assert (r.window_start, r.window_end) == (T0, T0 + timedelta(hours=1))
    assert None not in _funnel_rows(spark, journeys)  # organic sessions are left out


def test_conversion_from_an_empty_step_is_null(spark):
    r = _funnel_rows(spark, [("c1", 1)])["c1"]
    assert r.conversion_landing_page_view is None
