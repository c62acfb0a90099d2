"""Backfills: same rows as the stream where the stream saw everything, the late events where
it did not, and nothing changed by a second run."""

from datetime import date

from conftest import copy_sample, read
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines import tables
from pipelines.gold.build import build_gold
from pipelines.jobs.backfill import run_backfill
from pipelines.jobs.run import run_available_now
from pipelines.stateful.fraud import fraud_flags_batch

DAY = date(2026, 11, 2)


def _changed(totals) -> dict[str, int]:
    return {name: c.changed for name, c in totals.items()}


def test_backfill_over_what_the_stream_saw_whole_changes_nothing(spark, lake_settings):
    s = lake_settings  # all files in one micro-batch: nothing is behind the watermark
    copy_sample(s.input)
    run_available_now(spark, s)
    assert read(spark, s, "silver/events").where("late").count() == 0
    totals = run_backfill(spark, s, DAY, DAY, ["silver", "gold"])
    assert set(_changed(totals).values()) == {0}, _changed(totals)
    assert totals["silver/events"].read > 14_000


def test_backfill_adds_late_events_then_is_idempotent(spark, tmp_path):
    from pipelines.config import load_settings

    s = load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing",
                                 "stream": {"max_files_per_trigger": 2}})
    copy_sample(s.input)
    run_available_now(spark, s)
    late = read(spark, s, "silver/events").where("late").count()
    assert late > 0

    first = run_backfill(spark, s, DAY, DAY, ["silver", "gold"])
    assert first["silver/events"].added == late  # the late flag is cleared: the rows changed
    assert first["gold/session_funnel"].changed > 0
    silver = read(spark, s, "silver/events")
    assert silver.where("late").count() == 0
    # The backfilled gold is the batch build over every event, late ones included.
    batch = build_gold(silver, s)
    for table in (tables.SESSION_FUNNEL, tables.CAMPAIGN_FUNNEL, tables.CAMPAIGN_PERFORMANCE,
                  tables.PRODUCT_ABANDONMENT):
        assertDataFrameEqual(read(spark, s, table.name), batch[table.name], checkRowOrder=False,
                             rtol=1e-9)
    watermark = silver.agg(F.max("event_time")).first()[0] - s.stream.watermark_delay
    assertDataFrameEqual(read(spark, s, "gold/fraud_flags"),
                         fraud_flags_batch(silver, s.fraud, watermark), checkRowOrder=False)

    second = run_backfill(spark, s, DAY, DAY, ["silver", "gold"])
    assert set(_changed(second).values()) == {0}, _changed(second)
