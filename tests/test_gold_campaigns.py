"""Campaign performance, budget shift, product abandonment and drop-off alerts, by hand."""

import hashlib
from datetime import datetime, timedelta

import pytest
from chispa import assert_df_equality

from pipelines.config import DropoffRule
from pipelines.gold.abandonment import product_abandonment
from pipelines.gold.alerts import dropoff_alerts, fire
from pipelines.gold.campaigns import add_totals, campaign_totals, performance

T0 = datetime(2026, 11, 2, 10, 0, 0)
SESSION_COLS = "session_id string, campaign_id string, clicks long, purchases long, revenue double"


def _performance(spark, rows) -> dict:
    totals = spark.createDataFrame(rows, SESSION_COLS).transform(campaign_totals()).toPandas()
    return {r.campaign_id: r for r in performance(totals, prior_clicks=100).itertuples()}


def test_the_briefs_example_moves_budget_to_the_better_converter(spark):
    # A: 10,000 clicks, 50 purchases (0.5%); B: 5,000 clicks, 100 purchases (2%).
    rows = ([(f"a{i}", "A", 1, int(i < 50), 10.0 * (i < 50)) for i in range(10_000)]
            + [(f"b{i}", "B", 1, int(i < 100), 10.0 * (i < 100)) for i in range(5_000)]
            + [("o1", None, 1, 1, 5.0)])  # organic: no campaign to credit
    perf = _performance(spark, rows)
    assert set(perf) == {"A", "B"}
    a, b = perf["A"], perf["B"]
    assert (a.clicks, a.purchases, a.purchase_conversion) == (10_000, 50, 0.005)
    assert (b.clicks, b.purchases, b.purchase_conversion) == (5_000, 100, 0.02)
    assert (a.revenue, b.revenue) == (500.0, 1000.0)
    assert a.current_budget_share == pytest.approx(2 / 3)
    # Worked by hand: overall 150/15,000 = 1%; smoothed A = 51/10,100, B = 101/5,100;
    # weights 10,000 x 51/10,100 = 50.495, 5,000 x 101/5,100 = 99.020 -> shares .3377, .6623.
    assert a.recommended_budget_share == pytest.approx(0.3377, abs=1e-4)
    assert b.recommended_budget_share == pytest.approx(0.6623, abs=1e-4)
    assert b.budget_change == pytest.approx(0.6623 - 1 / 3, abs=1e-4)


def test_signed_totals_retract_an_old_version(spark):
    """The stream's form: a session counted with 0 purchases, then retracted and re-added with one."""
    rows = [("s1", "A", 2, 0, 0.0, 1), ("s2", "A", 1, 1, 9.5, 1), ("s1", "A", 2, 0, 0.0, -1),
            ("s1", "A", 2, 1, 30.0, 1)]
    delta = spark.createDataFrame(rows, SESSION_COLS + ", sign int").transform(campaign_totals()).toPandas()
    [a] = delta.itertuples()
    assert (a.sessions, a.clicks, a.purchases, a.revenue) == (2, 3, 2, 39.5)
    stored = delta.assign(sessions=10, clicks=100, purchases=4, revenue=100.0)
    [total] = add_totals(stored, delta).itertuples()
    assert (total.sessions, total.clicks, total.purchases, total.revenue) == (12, 103, 6, 139.5)
    [p] = performance(add_totals(stored, delta)).itertuples()
    assert (p.purchase_conversion, p.current_budget_share, p.recommended_budget_share) == (6 / 103, 1.0, 1.0)


def test_product_abandonment(spark):
    rows = [("s1", ["p1", "p2"], ["p1"]), ("s2", ["p1"], []), ("s3", ["p2"], ["p2"]),
            ("s4", [], ["p3"]), ("s5", ["p2"], ["p2"])]
    df = spark.createDataFrame(rows, "session_id string, added_products array<string>, "
                                     "purchased_products array<string>")
    got = {r.product_id: r for r in df.transform(product_abandonment()).collect()}
    assert (got["p1"].adds, got["p1"].purchases, got["p1"].abandonment_rate) == (2, 1, 0.5)
    assert (got["p2"].adds, got["p2"].purchases) == (3, 2)
    assert got["p2"].abandonment_rate == pytest.approx(1 / 3)
    assert (got["p3"].adds, got["p3"].direct_purchases, got["p3"].abandonment_rate) == (0, 1, None)


CART = DropoffRule(name="click_to_cart", from_step="ad_click", to_step="add_to_cart",
                   min_conversion=0.2, min_volume=100)
FUNNEL_COLS = ("campaign_id string, window_start timestamp, window_end timestamp, "
               "reached_ad_click long, reached_add_to_cart long")


def _alerts(spark, rows, watermark=T0 + timedelta(hours=5)):
    df = spark.createDataFrame(rows, FUNNEL_COLS)
    return df.transform(dropoff_alerts([CART], timedelta(minutes=30), watermark)).collect()


def _cell(campaign, clicks, carts, hour=0):
    start = T0 + timedelta(hours=hour)
    return (campaign, start, start + timedelta(hours=1), clicks, carts)


def test_under_threshold_with_volume_fires(spark):
    [a] = _alerts(spark, [_cell("weak", 100, 19), _cell("ok", 100, 20), _cell("fine", 500, 300)])
    assert (a.campaign_id, a.rule, a.kind, a.metric) == ("weak", "click_to_cart", "dropoff",
                                                         "ad_click->add_to_cart")
    assert (a.value, a.threshold, a.volume) == (0.19, 0.2, 100)
    assert "weak: ad_click->add_to_cart conversion 19.0% < 20%" in a.message


def test_under_threshold_without_volume_does_not_fire(spark):
    assert _alerts(spark, [_cell("weak", 99, 0)]) == []


def test_an_open_window_is_not_judged(spark):
    # Window 10:00-11:00 closes at 11:30 (end + gap); the watermark is 11:29.
    assert _alerts(spark, [_cell("weak", 100, 0)], watermark=T0 + timedelta(minutes=89)) == []
    assert len(_alerts(spark, [_cell("weak", 100, 0)], watermark=T0 + timedelta(minutes=90))) == 1


def test_alert_ids_are_stable_per_rule_campaign_and_window(spark):
    rows = [_cell("weak", 100, 0), _cell("weak", 100, 0, hour=1)]
    first = sorted(a.alert_id for a in _alerts(spark, rows))
    again = sorted(a.alert_id for a in _alerts(spark, rows))
    assert len(set(first)) == 2 and first == again


def test_alert_id_and_message_are_those_of_the_rule_campaign_and_window(spark):
    """The id is the first 24 hex digits of SHA-256 over ``rule|campaign|window start`` (a
    lake's existing alerts keep theirs), and a conversion on a half rounds up: 10 of 800
    is 1.25%, shown as 1.3%."""
    [a] = _alerts(spark, [_cell("thin", 800, 10)])
    assert a.alert_id == hashlib.sha256(b"click_to_cart|thin|2026-11-02 10:00:00").hexdigest()[:24]
    assert a.message == ("thin: ad_click->add_to_cart conversion 1.3% < 20% over 800 sessions "
                         "(window 2026-11-02 10:00)")
    assert (a.window_start, a.window_end, a.value, a.volume) == (T0, T0 + timedelta(hours=1), 0.0125, 800)


def test_the_stream_fires_on_its_driver_what_the_batch_build_fires_in_spark(spark):
    """``fire`` on Arrow cells (the stream's driver) and ``dropoff_alerts`` (Spark, a batch
    build) give the same rows, ``created_at`` aside."""
    rows = [_cell("weak", 100, 19), _cell("thin", 800, 10, hour=1), _cell("ok", 100, 20), _cell("few", 99, 0)]
    cells = spark.createDataFrame(rows, FUNNEL_COLS)
    batch = cells.transform(dropoff_alerts([CART], timedelta(minutes=30), T0 + timedelta(hours=5)))
    driver = spark.createDataFrame(fire(cells.toArrow(), [CART]))
    assert batch.count() == 2
    assert_df_equality(driver.drop("created_at"), batch.drop("created_at"), ignore_row_order=True,
                       ignore_nullable=True)
