"""Sessions and funnels on hand-built events: every expected value is written by hand."""

from datetime import datetime, timedelta

import pandas as pd
import pytest
from chispa import assert_df_equality

from pipelines.config import load_settings
from pipelines.gold.build import session_rows
from pipelines.gold.funnel import campaign_funnel
from pipelines.gold.sessions import sessionize

GAP = timedelta(minutes=30)
T0 = datetime(2026, 11, 2, 10, 0, 0)
MS0 = int(pd.Timestamp(T0, tz="UTC").timestamp() * 1000)
STEP = {"ad_impression": 1, "ad_click": 2, "landing_page_view": 3, "add_to_cart": 4,
        "checkout_start": 5, "purchase": 6}


def ev(rows: list, etype: str, seconds: float, tid: str = "t1", campaign: str | None = None,
       product: str | None = None, price: float | None = None, qty: int | None = None,
       user: str = "u1", country: str | None = "US", ip: str | None = "h1") -> None:
    rows.append({"event_id": f"e{len(rows)}", "event_type": etype, "step": STEP[etype],
                 "t": MS0 + int(seconds * 1000), "user_id": user, "tracking_id": tid,
                 "campaign_id": campaign, "product_id": product, "price": price, "quantity": qty,
                 "ip_country": country, "ip_hash": ip})


def frame(rows: list) -> pd.DataFrame:
    """Hand-built events as ``sessionize`` reads them (the hashes Spark would add)."""
    df = pd.DataFrame(rows)
    df["journey"] = [hash(t) for t in df["tracking_id"]]
    df["tie"] = [hash(e) for e in df["event_id"]]
    return df.astype({"price": "float64", "quantity": "float64"})


def sessions_of(rows: list, attribution: str = "first_touch") -> dict:
    out = sessionize(frame(rows), GAP, attribution)
    return {(r.tracking_id, r.session_start): r for r in out.itertuples(index=False)}


def only(sessions: dict):
    assert len(sessions) == 1
    return next(iter(sessions.values()))


def test_full_journey_reaches_level_six_with_times_to_convert():
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 10, campaign="c1")
    ev(rows, "landing_page_view", 12)
    ev(rows, "add_to_cart", 60, product="p1", price=10.0, qty=2)
    ev(rows, "add_to_cart", 70, product="p2", price=5.0, qty=1)
    ev(rows, "checkout_start", 100, product="p1", price=10.0, qty=2)
    ev(rows, "purchase", 130, product="p1", price=10.0, qty=2)
    s = only(sessions_of(rows))
    assert (s.funnel_level, s.campaign_id, s.user_id) == (6, "c1", "u1")
    assert (s.seconds_to_ad_click, s.seconds_to_add_to_cart, s.seconds_to_purchase) == (10, 60, 130)
    assert (s.clicks, s.adds, s.purchases, s.items, s.revenue, s.event_count) == (1, 2, 1, 2, 20.0, 7)
    assert list(s.added_products) == ["p1", "p2"] and list(s.purchased_products) == ["p1"]
    assert (s.session_start, s.session_end) == (MS0, MS0 + 130_000)
    assert list(s.countries) == ["US"]


def test_countries_and_addresses_are_the_sessions_distinct_known_ones_sorted():
    rows: list = []
    ev(rows, "landing_page_view", 0, country="US", ip="h2")
    ev(rows, "add_to_cart", 60, product="p1", price=10.0, qty=1, country="JP", ip="h1")
    ev(rows, "add_to_cart", 90, product="p1", price=10.0, qty=1, country=None, ip=None)  # no address
    ev(rows, "purchase", 120, product="p1", price=10.0, qty=1, country="JP", ip="h1")
    ev(rows, "landing_page_view", 3 * 3600, country=None, ip=None)  # a later session, nowhere known
    first, later = sorted(sessions_of(rows).values(), key=lambda r: r.session_start)
    assert (list(first.countries), list(later.countries)) == (["JP", "US"], [])
    assert (list(first.ip_hashes), list(later.ip_hashes)) == (["h1", "h2"], [])


def test_a_skipped_step_stops_the_level():
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 5, campaign="c1")
    ev(rows, "add_to_cart", 20, product="p1", price=1.0, qty=1)  # no landing page view
    ev(rows, "purchase", 40, product="p1", price=1.0, qty=1)
    s = only(sessions_of(rows))
    assert s.funnel_level == 2
    assert pd.isna(s.seconds_to_add_to_cart)
    assert s.purchases == 1  # the purchase still counts as revenue, not as funnel progress


def test_out_of_order_arrival_is_ordered_by_event_time():
    rows: list = []
    ev(rows, "landing_page_view", 20)  # delivered first, happened third
    ev(rows, "ad_click", 10, campaign="c1")
    ev(rows, "ad_impression", 0, campaign="c1")
    assert only(sessions_of(rows)).funnel_level == 3


def test_steps_in_the_wrong_time_order_do_not_count():
    rows: list = []
    ev(rows, "ad_click", 0, campaign="c1")
    ev(rows, "ad_impression", 5, campaign="c1")
    ev(rows, "landing_page_view", 10)
    assert only(sessions_of(rows)).funnel_level == 1  # impression after the click


def test_equal_timestamps_are_ordered_by_step_index():
    rows: list = []
    ev(rows, "ad_click", 0, campaign="c1")
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "landing_page_view", 0)
    assert only(sessions_of(rows)).funnel_level == 3


def test_a_gap_longer_than_the_session_gap_splits_sessions():
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 60, campaign="c1")
    ev(rows, "ad_impression", 60 + 30 * 60 + 1, campaign="c2")  # 30 min 1 s later
    ev(rows, "ad_click", 60 + 30 * 60 + 5, campaign="c2")
    ev(rows, "landing_page_view", 60 + 30 * 60 + 9)
    got = sessions_of(rows)
    first, second = got[("t1", MS0)], got[("t1", MS0 + 1_861_000)]
    assert (first.funnel_level, first.campaign_id) == (2, "c1")
    assert (second.funnel_level, second.campaign_id) == (3, "c2")


def test_a_gap_of_exactly_the_session_gap_keeps_one_session():
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 30 * 60, campaign="c1")
    assert only(sessions_of(rows)).funnel_level == 2


def test_a_session_without_ad_events_is_organic():
    rows: list = []
    ev(rows, "landing_page_view", 0)
    ev(rows, "add_to_cart", 10, product="p1", price=3.0, qty=1)
    s = only(sessions_of(rows))
    assert (s.campaign_id, s.funnel_level, s.clicks) == (None, 0, 0)


def test_journeys_are_sessionized_apart():
    rows: list = []
    ev(rows, "ad_impression", 0, tid="a", campaign="c1")
    ev(rows, "ad_impression", 1, tid="b", campaign="c2")
    ev(rows, "ad_click", 2, tid="a", campaign="c1")
    got = sessions_of(rows)
    assert {(k[0], s.funnel_level, s.campaign_id) for k, s in got.items()} == {("a", 2, "c1"), ("b", 1, "c2")}


@pytest.mark.parametrize(("attribution", "campaign"), [("first_touch", "c1"), ("last_touch", "c2")])
def test_first_and_last_touch(attribution, campaign):
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 5, campaign="c2")
    ev(rows, "landing_page_view", 8, campaign="c3")  # not an ad event: never attributed
    assert only(sessions_of(rows, attribution)).campaign_id == campaign


SILVER_COLS = ("event_id string, event_type string, step int, event_time timestamp, user_id string, "
               "tracking_id string, campaign_id string, product_id string, price double, quantity int, "
               "ip_country string, ip_hash string")


def test_spark_sessions_are_typed_rows_of_the_table(spark):
    """The batch path (what a backfill writes): same function, typed as gold/session_funnel."""
    rows: list = []
    ev(rows, "ad_impression", 0, campaign="c1")
    ev(rows, "ad_click", 10, campaign="c1")
    ev(rows, "add_to_cart", 3 * 3600, product="p1", price=2.5, qty=2)  # a later session
    events = spark.createDataFrame(
        [(r["event_id"], r["event_type"], r["step"], T0 + timedelta(milliseconds=r["t"] - MS0),
          r["user_id"], r["tracking_id"], r["campaign_id"], r["product_id"], r["price"], r["quantity"],
          r["ip_country"], r["ip_hash"]) for r in rows], SILVER_COLS)
    s = load_settings(environ={}, local=False)
    watermark = T0 + timedelta(hours=1)  # closes the first session, not the second
    got = events.transform(session_rows(s, watermark)).select(
        "session_id", "session_start", "funnel_level", "adds", "added_products", "is_open", "session_date",
        "open_slot")
    expected = spark.createDataFrame([
        (f"t1@{MS0}", T0, 2, 0, [], False, T0.date(), None),
        # open: the 10 s slot its end (T0 + 3 h, on a slot boundary) starts
        (f"t1@{MS0 + 3 * 3_600_000}", T0 + timedelta(hours=3), 0, 1, ["p1"], True, T0.date(),
         MS0 // 1000 + 3 * 3600),
    ], got.schema)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def _funnel_rows(spark, journeys: list[tuple[str, int]]):
    """Sessions per (campaign, level) -> campaign_funnel rows, keyed by campaign."""
    rows = [(f"t{i}", T0 + timedelta(minutes=i % 50), c, level)
            for i, (c, level) in enumerate(journeys)]
    sessions = spark.createDataFrame(rows, "tracking_id string, session_start timestamp, "
                                           "campaign_id string, funnel_level int")
    cells = sessions.transform(campaign_funnel(timedelta(hours=1), GAP, T0 + timedelta(hours=2)))
    return {r.campaign_id: r for r in cells.collect()}


def test_campaign_funnel_counts_sessions_reaching_each_step(spark):
    journeys = [("c1", 6)] * 2 + [("c1", 4)] + [("c1", 2)] * 3 + [("c1", 1)] * 4 + [(None, 0)]
    r = _funnel_rows(spark, journeys)["c1"]
    assert (r.sessions, r.reached_ad_impression, r.reached_ad_click, r.reached_landing_page_view,
            r.reached_add_to_cart, r.reached_checkout_start, r.reached_purchase) == (10, 10, 6, 3, 3, 2, 2)
    assert r.conversion_ad_click == pytest.approx(0.6)
    assert r.conversion_landing_page_view == pytest.approx(0.5)
    assert r.conversion_add_to_cart == pytest.approx(1.0)
    assert (r.window_start, r.window_end) == (T0, T0 + timedelta(hours=1))
    assert r.closed  # 11:00 + 30 min gap <= the watermark 12:00
    assert None not in _funnel_rows(spark, journeys)  # organic sessions are left out


def test_signed_sessions_add_up(spark):
    """The stream's form: a session retracted (-1) and re-added (+1) at a higher level."""
    rows = [("t1", T0, "c1", 2, 1), ("t2", T0, "c1", 1, 1), ("t1", T0, "c1", 2, -1), ("t1", T0, "c1", 4, 1)]
    sessions = spark.createDataFrame(rows, "tracking_id string, session_start timestamp, "
                                           "campaign_id string, funnel_level int, sign int")
    [r] = sessions.transform(campaign_funnel(timedelta(hours=1), GAP, None)).select(
        "sessions", "reached_ad_click", "reached_add_to_cart", "closed").collect()
    assert tuple(r) == (2, 1, 1, False)


def test_conversion_from_an_empty_step_is_null(spark):
    r = _funnel_rows(spark, [("c1", 1)])["c1"]
    assert r.conversion_landing_page_view is None
