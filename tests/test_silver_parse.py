"""Parsing and validation, one hand-written line per kind of bad input."""

import json
from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.common import MissingColumns
from pipelines.silver import dedupe, parse, quarantined, valid_events
from pipelines.tables import BRONZE_EVENTS

GOOD = {
    "event_id": "e1", "event_type": "add_to_cart", "event_time": "2026-11-02T10:00:00.250+02:00",
    "user_id": "u1", "tracking_id": "t1", "product_id": "sku_1", "price": 12.5, "quantity": 2,
    "ip": "10.0.0.1", "user_agent": "ua", "campaign_id": "", "utm_source": "kept in bronze only",
}


def line(**changes) -> str:
    ev = {**GOOD, **changes}
    return json.dumps({k: v for k, v in ev.items() if v is not ...})


def bronze(spark, *lines: str):
    """Bronze rows for ``lines``, ingested one second apart from 09:00:00."""
    rows = [{"raw": raw, "ingest_time": datetime(2026, 11, 2, 9, 0, i)} for i, raw in enumerate(lines)]
    return spark.createDataFrame(rows, BRONZE_EVENTS.schema)


CASES = [
    ("not json at all", "malformed_json"),
    ('{"event_id": "e1", "event_ty', "malformed_json"),
    ("", "malformed_json"),
    ("[1, 2, 3]", "malformed_json"),
    (line(event_id=...), "missing_event_id"),
    (line(event_id="  "), "missing_event_id"),
    (line(event_type=...), "missing_event_type"),
    (line(event_time=...), "missing_event_time"),
    (line(user_id=...), "missing_user_id"),
    (line(tracking_id=None), "missing_tracking_id"),
    (line(event_type="ad_hover"), "unknown_event_type"),
    (line(event_type="PURCHASE"), "unknown_event_type"),
    (line(event_time="2026-11-02T10:00:00.250"), "invalid_event_time"),
    (line(event_time="25/11/2026 10:00:00"), "invalid_event_time"),
    (line(event_time="2026-13-45T10:00:00.000Z"), "invalid_event_time"),
    (line(event_time="1999-12-31T23:59:59.999Z"), "event_time_out_of_range"),
    (line(event_time="2200-01-01T00:00:00.001Z"), "event_time_out_of_range"),
    (line(event_time="0001-01-01T00:00:00Z"), "event_time_out_of_range"),
    (line(price="cheap"), "invalid_price"),
    (line(price="NaN"), "invalid_price"),
    (line(price="-Infinity"), "invalid_price"),
    (json.dumps(GOOD).replace('"price": 12.5', '"price": NaN'), "invalid_price"),
    (line(price=-0.01), "negative_price"),
    (line(quantity=0), "invalid_quantity"),
    (line(quantity="two"), "invalid_quantity"),
    (line(product_id=...), "missing_product_id"),
    (line(event_type="purchase", product_id=""), "missing_product_id"),
]


@pytest.mark.parametrize(("raw", "reason"), CASES)
def test_each_bad_input_gets_its_reason(spark, raw, reason):
    out = bronze(spark, raw).transform(parse).transform(quarantined).collect()
    redacted = raw.replace('"ip": "10.0.0.1"', '"ip": "<ip>"')  # bronze keeps the address; quarantine not
    assert [(r.raw, r.reason) for r in out] == [(redacted, reason)]


def test_a_byte_order_mark_opening_the_line_is_ignored_and_the_edges_of_the_time_range_pass(spark):
    lines = ["\ufeff" + line(event_id="bom"), line(event_id="first", event_time="2000-01-01T00:00:00Z"),
             line(event_id="last", event_time="2200-01-01T00:00:00Z")]
    parsed = bronze(spark, *lines).transform(parse)
    assert parsed.where("reason IS NOT NULL").count() == 0
    assert sorted(r.event_id for r in parsed.transform(valid_events).collect()) == ["bom", "first", "last"]


def test_all_bad_cases_at_once_keep_one_row_each(spark):
    df = bronze(spark, *[raw for raw, _ in CASES]).transform(parse)
    assert df.transform(valid_events).count() == 0
    got = sorted(r.reason for r in df.transform(quarantined).collect())
    assert got == sorted(reason for _, reason in CASES)


def test_a_rejected_row_keeps_where_it_came_from_and_a_valid_row_leaves_it_to_bronze(spark):
    rows = [{"raw": raw, "source_file": "file:///landing/a.jsonl", "kafka_topic": "events",
             "kafka_partition": 3, "kafka_offset": offset, "ingest_time": datetime(2026, 11, 2, 9, 0)}
            for offset, raw in ((7, line()), (8, "not json at all"))]
    parsed = spark.createDataFrame(rows, BRONZE_EVENTS.schema).transform(parse)
    source = ["reason", "source_file", "kafka_topic", "kafka_partition", "kafka_offset"]
    expected = spark.createDataFrame(
        [(None, None, None, None, None), ("malformed_json", "file:///landing/a.jsonl", "events", 3, 8)],
        "reason string, source_file string, kafka_topic string, kafka_partition int, kafka_offset long")
    assert_df_equality(parsed.select(source), expected, ignore_row_order=True, ignore_nullable=True)
    [quarantine] = parsed.transform(quarantined).collect()
    assert (quarantine.source_file, quarantine.kafka_offset) == ("file:///landing/a.jsonl", 8)


def test_a_valid_line_is_typed_in_utc(spark):
    [row] = bronze(spark, line()).transform(parse).transform(valid_events).collect()
    assert row.event_time == datetime(2026, 11, 2, 8, 0, 0, 250000)  # +02:00 -> UTC
    assert (row.event_type, row.step, row.price, row.quantity) == ("add_to_cart", 4, 12.5, 2)
    assert row.campaign_id is None  # blank optional field -> null
    assert str(row.event_date) == "2026-11-02"
    assert row.late is False


def test_ad_events_need_no_product(spark):
    raw = line(event_type="ad_impression", product_id=..., price=..., quantity=...,
               campaign_id="cmp_01", event_time="2026-11-02T23:59:59.999Z")
    [row] = bronze(spark, raw).transform(parse).transform(valid_events).collect()
    assert (row.step, row.campaign_id, row.price, str(row.event_date)) == (1, "cmp_01", None,
                                                                           "2026-11-02")


def test_dedupe_keeps_the_first_delivery(spark):
    df = bronze(spark, line(), line(event_id="e2"), line()).transform(parse).transform(valid_events)
    out = df.transform(dedupe).orderBy("event_id").collect()
    assert [r.event_id for r in out] == ["e1", "e2"]
    assert out[0].ingest_time == datetime(2026, 11, 2, 9, 0, 0)


def test_extra_fields_are_ignored_by_silver(spark):
    df = bronze(spark, line()).transform(parse).transform(valid_events)
    assert "utm_source" not in df.columns
    assert df.where(F.col("event_id") == "e1").count() == 1


def test_silver_refuses_input_without_bronze_columns(spark):
    with pytest.raises(MissingColumns, match="ingest_time"):
        spark.createDataFrame([("x",)], "raw string").transform(parse)


# Schema drift: what a producer's change to the event's shape does (docs/bad-input.md).
DRIFT = [
    ("a new field", line(coupon="SAVE10", session={"n": 1}), None),
    ("a field whose type changed", line(quantity=2.5), "invalid_quantity"),
    ("a field whose type changed to an object", line(price={"amount": 12.5, "currency": "EUR"}),
     "invalid_price"),
    ("a renamed field", line(event_time=..., eventTime="2026-11-02T10:00:00Z"), "missing_event_time"),
]


@pytest.mark.parametrize(("change", "raw", "reason"), DRIFT, ids=[d[0] for d in DRIFT])
def test_schema_drift_is_kept_or_quarantined_with_its_reason(spark, change, raw, reason):
    parsed = bronze(spark, raw).transform(parse)
    assert [r.reason for r in parsed.collect()] == [reason], change
    if reason is None:  # the event is kept; the new field stays in bronze's raw line only
        assert [r.event_id for r in parsed.transform(valid_events).collect()] == ["e1"]


@pytest.mark.parametrize("watermark", [datetime(2026, 11, 2, 8, 0, 0, 250000), None])
def test_the_drivers_late_marks_are_those_of_mark_late(spark, watermark):
    """The stream marks ``late`` on its collected rows (``mark_late_arrow``); a backfill with
    ``mark_late``. Hand-built times: before, exactly at (late: at or before) and after."""
    from helpers import assert_same_rows

    from pipelines.silver import mark_late, mark_late_arrow

    times = ["2026-11-02T09:59:59.999+02:00", "2026-11-02T10:00:00.250+02:00",
             "2026-11-02T10:00:00.251+02:00"]
    events = (bronze(spark, *[line(event_id=f"e{i}", event_time=t) for i, t in enumerate(times)])
              .transform(parse).transform(valid_events).select("event_id", "event_time", "late"))
    ours = mark_late_arrow(events.drop("late").toArrow(), watermark)
    late = dict(zip(ours["event_id"].to_pylist(), ours["late"].to_pylist(), strict=True))
    assert late == {"e0": watermark is not None, "e1": watermark is not None, "e2": False}
    theirs = events.transform(mark_late(watermark))
    assert_same_rows(spark.createDataFrame(ours.select(events.columns)), theirs)
