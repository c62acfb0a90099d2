"""Cart reminders: hand-built sessions, then the sample against the generator's truth."""

import json
from datetime import datetime, timedelta

from helpers import SAMPLE, read
from pyspark.sql import functions as F

from pipelines.gold.reminders import cart_reminders

T0 = datetime(2026, 11, 2, 10, 0)
GAP = timedelta(minutes=30)
COLS = ("session_id string, user_id string, tracking_id string, session_start timestamp, "
        "session_end timestamp, adds long, purchases long, added_products array<string>, is_open boolean")
TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())


def _session(sid, adds, purchases, is_open=False):
    return (sid, "u1", f"t-{sid}", T0, T0 + timedelta(minutes=5), adds, purchases, ["p1", "p2"], is_open)


def _reminded(spark, rows):
    df = spark.createDataFrame(rows, COLS).transform(cart_reminders(3))
    return {r.reminder_id: r for r in df.collect()}


def test_three_adds_without_purchase_get_one_reminder_listing_the_products(spark):
    rows = [_session("a", 3, 0), _session("b", 2, 0), _session("c", 5, 1)]
    got = _reminded(spark, rows)
    assert set(got) == {"a"}
    assert (got["a"].user_id, got["a"].adds, got["a"].products) == ("u1", 3, ["p1", "p2"])


def test_no_reminder_while_the_session_is_open(spark):
    # When a session closes (the watermark reaches session_end + gap) is the session processor's
    # timer: tests/test_session_state.py checks it to the millisecond.
    assert _reminded(spark, [_session("a", 3, 0, is_open=True)]) == {}


def test_the_sample_reminds_exactly_the_generated_abandoners(spark, sample_lake):
    s = sample_lake
    silver = read(spark, s, "silver/events")
    late = {r.event_id for r in silver.where("late").select("event_id").collect()}
    watermark = silver.agg(F.max("event_time")).first()[0] - s.stream.watermark_delay
    reminders = {r.tracking_id: r for r in read(spark, s, "gold/cart_reminders").collect()}
    abandoners = {a["tracking_id"]: a for a in TRUTH["cart_abandoners"]}

    assert set(reminders) <= set(abandoners)  # precision: only real abandoners
    clean = {tid for tid, a in abandoners.items() if not late & set(a["add_event_ids"])
             and datetime.fromisoformat(a["last_event_time"][:-1]) + GAP <= watermark}
    assert clean <= set(reminders)  # recall on every abandoner the watermark has closed
    assert len(clean) > 200
    for tid in clean:
        assert reminders[tid].products == abandoners[tid]["products"]
        assert reminders[tid].adds == abandoners[tid]["adds"]
