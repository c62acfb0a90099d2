"""Backfills: same rows as the stream where the stream saw everything, the late events where
it did not, and nothing changed by a second run."""

import json
import logging
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from helpers import SAMPLE, assert_same_rows, copy_sample, lake_copy, read
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import tables
from pipelines.gold.build import build_gold
from pipelines.io.lease import lease
from pipelines.jobs.backfill import run_backfill
from pipelines.jobs.run import run_available_now, run_continuously
from pipelines.stateful.fraud import fraud_flags_batch
from pipelines.streams import CHECKPOINTS, QUERY

DAY = date(2026, 11, 2)
TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())


def _changed(totals) -> dict[str, int]:
    return {name: c.changed for name, c in totals.items()}


@pytest.mark.slow  # streams a fresh lake (whole_lake)
def test_backfill_over_what_the_stream_saw_whole_changes_nothing(spark, whole_lake, tmp_path):
    """Where the stream saw every event on time, silver and gold already equal the batch
    build, so a backfill changes no row: the same state a first backfill leaves, so this is
    also what a second run of any backfill finds."""
    s = lake_copy(whole_lake, tmp_path)  # all files in one micro-batch: nothing is behind the watermark
    assert read(spark, s, "silver/events").where("late").count() == 0
    totals = run_backfill(spark, s, DAY, DAY, ["silver", "gold"])
    assert set(_changed(totals).values()) == {0}, _changed(totals)
    assert totals["silver/events"].read > 14_000
    assert not (Path(s.lake) / "_mlflow").exists()  # no model yet: no MLflow store made to learn that


@pytest.mark.slow  # whole backfills of silver and gold
def test_backfill_adds_late_events_and_gives_the_batch_build(spark, sample_lake, tmp_path):
    s = lake_copy(sample_lake, tmp_path)  # streamed two files per batch: some events were late
    late = read(spark, s, "silver/events").where("late").count()
    assert late > 0

    held = spark.createDataFrame(  # the journeys the stream holds open: gold's open rows now
        read(spark, s, tables.SESSION_FUNNEL.name).where("is_open").select("tracking_id").collect(),
        "tracking_id string")
    first = run_backfill(spark, s, DAY, DAY, ["silver", "gold"])
    assert first["silver/events"].added == late  # the late flag is cleared: the rows changed
    assert first["gold/session_funnel"].changed > 0
    silver = read(spark, s, "silver/events")
    assert silver.where("late").count() == 0
    # The backfilled gold is the batch build over every event, late ones included.
    batch = build_gold(silver, s)
    batch[tables.SESSION_FUNNEL.name] = _as_the_stream_holds(batch[tables.SESSION_FUNNEL.name], held)
    for table in (tables.SESSION_FUNNEL, tables.CAMPAIGN_FUNNEL, tables.CAMPAIGN_PERFORMANCE,
                  tables.PRODUCT_ABANDONMENT):
        assert_same_rows(read(spark, s, table.name), batch[table.name], precision=1e-6)
    watermark = silver.agg(F.max("event_time")).first()[0] - s.stream.watermark_delay
    assert_same_rows(read(spark, s, "gold/fraud_flags"),
                         fraud_flags_batch(silver, s.fraud, watermark), precision=None)
    # A second run would find silver and gold equal to the batch build: what the test above
    # (a backfill over a lake the stream built whole) shows changes nothing.


def _as_the_stream_holds(batch: DataFrame, held: DataFrame) -> DataFrame:
    """A batch build's sessions as a lake beside a stream holds them. The stream closes only
    the sessions it holds (``held``: those journeys); a backfill writes closed any session open
    by the watermark whose journey the stream holds none of (its events came behind the
    stream's watermark, and the backfill's silver step took them in)."""
    held = held.distinct().withColumn("_held", F.lit(True))
    still = F.col("is_open") & F.coalesce(F.col("_held"), F.lit(False))
    return (batch.join(held, "tracking_id", "left").withColumn("is_open", still)
            .withColumn("open_slot", F.when(still, F.col("open_slot"))).select(batch.columns))


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def _batches(spark) -> dict[str, int]:
    """The last micro-batch id of each running query."""
    return {q.name: (q.lastProgress or {}).get("batchId", -1) for q in spark.streams.active}


@pytest.mark.slow
def test_backfill_beside_a_running_stream_ends_with_correct_tables(spark, tmp_path):
    """The stream runs continuously (one file per micro-batch) while files keep landing and a
    backfill rewrites the same day. Afterwards silver holds every event exactly once, and
    every gold table is what a batch build over the final on-time silver gives."""
    from pipelines.config import load_settings

    s = load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing",
                                 "stream": {"max_files_per_trigger": 1, "trigger_interval": "1 second"}},
                      environ={}, local=False)
    copy_sample(s.input, slice(0, 3))
    stop = threading.Event()
    stream = threading.Thread(target=run_continuously, args=(spark, s), kwargs={"stop": stop})

    def feed() -> None:  # the rest arrive while the backfill runs: bronze grows under it
        for i in range(3, 8):
            time.sleep(3)
            copy_sample(s.input, slice(i, i + 1))
    feeder = threading.Thread(target=feed)
    stream.start()
    try:
        _wait_for(lambda: DeltaTable.isDeltaTable(spark, s.table("gold/session_funnel"))
                  and read(spark, s, "gold/session_funnel").count() > 0)
        feeder.start()
        before = _batches(spark)
        run_backfill(spark, s, DAY, DAY, ["silver", "gold"])
        # The stream (bronze, silver and gold: one query) kept going meanwhile: the two really
        # overlapped.
        after = _batches(spark)
        assert after[QUERY] > before[QUERY], (before, after)
        assert stream.is_alive()
    finally:
        feeder.join()
        stop.set()
        stream.join()
    run_available_now(spark, s)  # the same checkpoints: drain whatever is still pending

    silver = read(spark, s, "silver/events")
    assert silver.count() == silver.select("event_id").distinct().count() == TRUTH["valid_unique_events"]
    assert read(spark, s, "silver/quarantine").count() == TRUTH["malformed_lines"]
    on_time = silver.where(~F.col("late"))
    batch = build_gold(on_time, s)
    streamed = read(spark, s, tables.SESSION_FUNNEL.name)  # a row left open by mistake is still caught:
    held = streamed.where("is_open").select("tracking_id")  # the batch build says it closed
    batch[tables.SESSION_FUNNEL.name] = _as_the_stream_holds(batch[tables.SESSION_FUNNEL.name], held)
    for table in (tables.SESSION_FUNNEL, tables.CAMPAIGN_FUNNEL, tables.CAMPAIGN_PERFORMANCE,
                  tables.PRODUCT_ABANDONMENT):
        assert_same_rows(read(spark, s, table.name), batch[table.name], precision=1e-6)
    flags = read(spark, s, "gold/fraud_flags")
    assert flags.count() == flags.select("flag_id").distinct().count()
    watermark = silver.agg(F.max("event_time")).first()[0] - s.stream.watermark_delay
    assert_same_rows(flags, fraud_flags_batch(on_time, s.fraud, watermark), precision=None)


@pytest.mark.slow  # two backfills of silver from the landing archive
def test_backfill_from_the_landing_archive_rebuilds_lost_silver(spark, sample_lake, tmp_path):
    """Silver rows deleted by mistake come back from the landing files, with the ground
    truth's count; a second run changes nothing."""
    s = lake_copy(sample_lake, tmp_path)
    # The stream marked some events late; the backfill clears that flag, which rewrites them.
    late = read(spark, s, "silver/events").where("late AND event_type != 'purchase'").count()
    DeltaTable.forPath(spark, s.table("silver/events")).delete("event_type = 'purchase'")
    totals = run_backfill(spark, s, DAY, DAY, ["silver"], source="landing-archive")
    purchases = TRUTH["events_by_type"]["purchase"]
    assert totals["silver/events"].added == purchases + late
    assert totals["silver/events"].removed == late
    silver = read(spark, s, "silver/events")
    assert silver.count() == TRUTH["valid_unique_events"]
    assert silver.where("event_type = 'purchase'").count() == purchases
    again = run_backfill(spark, s, DAY, DAY, ["silver"], source="landing-archive")
    assert again["silver/events"].changed == 0


@pytest.mark.slow
def test_a_stream_batch_waits_while_a_backfill_holds_the_lease(spark, lake_settings, caplog):
    s = lake_settings
    copy_sample(s.input, slice(0, 2))
    caplog.set_level(logging.INFO, logger="pipelines.io.lease")
    with lease(s.lake, who="test"):
        stream = threading.Thread(target=run_available_now, args=(spark, s))
        stream.start()
        _wait_for(lambda: "waits for the gold lease" in caplog.text)  # the batch got to the lease
        time.sleep(2)  # and stays there, having written nothing
        assert stream.is_alive()
        for table in ("bronze/events", "silver/events", "gold/session_funnel"):  # all wait
            assert not Path(s.table(table)).exists() or read(spark, s, table).count() == 0, table
    stream.join()
    assert read(spark, s, "gold/session_funnel").count() > 0


@pytest.mark.slow
def test_a_backfill_between_stream_batches_counts_each_session_once(spark, lake_settings):
    """A gold backfill between two runs of the stream, then the rest of the input: every gold
    table must equal the batch build over the final on-time silver. Bugs of earlier shapes
    this caught, when gold was a query of its own that could lag silver:
    - the backfill judged sessions by silver's newer watermark, not the gold stream's, and
      wrote sessions closed that the stream still held open; the stream, closing them
      later, inserted each a second time;
    - the backfill built from silver rows gold had not read; the stream, reading them
      afterwards, added those sessions' signed rows to the aggregates again;
    - the fix's first cut took gold's position from Spark's commit log, one batch behind
      what gold had applied when the backfill took the lease between the two.
    Now silver and gold are written by one micro-batch under the lease. One that stopped part
    way (its writes landed, its state did not) makes the backfill refuse to run."""
    s = lake_settings
    copy_sample(s.input, slice(0, 2))
    run_available_now(spark, s)
    copy_sample(s.input, slice(2, 3))
    run_available_now(spark, s)
    # A batch that died between its table writes and its state file: its restart replays it
    # and the ledger skips what it wrote, so a backfill now is refused.
    states = Path(s.checkpoint(CHECKPOINTS[QUERY])) / "processors"
    newest = max(states.glob("[0-9]*.arrow"), key=lambda f: int(f.stem))
    newest.rename(newest.with_name("moved"))
    with pytest.raises(RuntimeError, match=r"stopped part way \(.*silver/events.*\)"):
        run_backfill(spark, s, DAY, DAY, ["gold"])
    newest.with_name("moved").rename(newest)
    # The backfill takes the lease in the moment after the last micro-batch wrote its tables
    # and state, before Spark marked it committed (the lease is released in between): that
    # batch's rows are gold's already. The stream replays the batch; its ledger skips it.
    commits = Path(s.checkpoint(CHECKPOINTS[QUERY])) / "commits"
    last = max(int(f.name) for f in commits.glob("[0-9]*"))
    for name in (str(last), f".{last}.crc"):
        (commits / name).unlink()
    run_backfill(spark, s, DAY, DAY, ["gold"])
    copy_sample(s.input, slice(3, None))
    run_available_now(spark, s)
    batch = build_gold(read(spark, s, "silver/events").where(~F.col("late")), s)
    for table in (tables.SESSION_FUNNEL, tables.CAMPAIGN_FUNNEL, tables.CAMPAIGN_PERFORMANCE,
                  tables.PRODUCT_ABANDONMENT):
        assert_same_rows(read(spark, s, table.name), batch[table.name], precision=1e-6)


@pytest.mark.slow
def test_backfill_leaves_silver_rows_newer_than_its_bronze_snapshot(spark, lake_settings):
    """A row the stream inserted from bronze the backfill has not read (ingest_time after the
    snapshot's newest) is outside the backfill's replaceWhere, so it survives."""
    s = lake_settings
    copy_sample(s.input, slice(0, 2))
    run_available_now(spark, s)
    silver = read(spark, s, "silver/events")
    newer = (silver.limit(1).withColumn("event_id", F.lit("from-newer-bronze"))
             .withColumn("ingest_time", F.col("ingest_time") + F.expr("INTERVAL 1 HOUR")))
    newer.write.format("delta").mode("append").save(s.table("silver/events"))
    totals = run_backfill(spark, s, DAY, DAY, ["silver"])
    assert totals["silver/events"].removed == 0
    assert read(spark, s, "silver/events").where("event_id = 'from-newer-bronze'").count() == 1


def test_difference_counts_rows_each_side_lacks_as_multisets(spark):
    """exceptAll both ways, by hand: duplicates count, NULLs equal NULLs, doubles equal to 9
    decimals, and ignored columns (left out of ``cols``) do not matter."""
    from pipelines.backfill import difference

    schema = "k string, v double, n int, t string"
    new = spark.createDataFrame([("a", 1.0, 1, "x"), ("a", 1.0, 1, "y"), ("b", None, 2, "x"),
                                 ("c", 0.1 + 0.2, 3, "x"), ("d", 4.0, 4, "x")], schema)
    old = spark.createDataFrame([("a", 1.0, 1, "z"), ("b", None, 2, "z"), ("c", 0.3, 3, "z"),
                                 ("e", 5.0, 5, "z"), ("e", 5.0, 5, "z")], schema)
    # new lacks: both e rows; old lacks: the second a and d.
    assert difference(new, old, ["k", "v", "n"]) == (2, 2, 5)
    assert difference(old, old, ["k", "v", "n"]) == (0, 0, 5)
    assert difference(new, old.limit(0), ["k", "v", "n"]) == (5, 0, 5)


def test_steps_run_after_the_tables_they_read_and_independent_ones_together():
    """``run_steps`` by hand: a step starts only once the steps it reads from finished, two
    independent steps overlap (each waits for the other to have started), the changes come
    back in the order of the steps, and a failure stops every step that reads its table."""
    from pipelines.backfill import Changes, Step, run_steps

    log: list[str] = []
    started = {t.name: threading.Event() for t in (tables.SESSION_FUNNEL, tables.FRAUD_FLAGS)}

    def step(table, after=(), meet=None, fail=False):
        def run():
            log.append(f"start {table.name}")
            started.get(table.name, threading.Event()).set()
            if meet is not None:  # independent: the other must be running at the same time
                assert started[meet.name].wait(10), f"{meet.name} did not run beside {table.name}"
            if fail:
                raise RuntimeError(f"{table.name} failed")
            log.append(f"end {table.name}")
            return Changes(table.name, 0, 0, 0, 0)
        return Step(table, tuple(after), run)

    sessions, flags, profiles = tables.SESSION_FUNNEL, tables.FRAUD_FLAGS, tables.USER_PROFILE
    out = run_steps([step(profiles, [sessions, flags]), step(sessions, meet=flags),
                     step(flags, meet=sessions)])
    assert [c.table for c in out] == [profiles.name, sessions.name, flags.name]
    assert log.index("start gold/user_profile") > max(log.index("end gold/session_funnel"),
                                                      log.index("end gold/fraud_flags"))

    log.clear()
    with pytest.raises(RuntimeError, match="session_funnel failed"):
        run_steps([step(sessions, fail=True), step(profiles, [sessions])])
    assert log == ["start gold/session_funnel"]
    with pytest.raises(ValueError, match="no step writes"):
        run_steps([step(profiles, [flags])])


def test_an_open_session_of_a_journey_the_stream_does_not_hold_is_written_closed(spark):
    """A backfill writes a session open only when the stream holds its journey open: the
    stream closes only what its state holds, so a session of events it skipped as late would
    stay open for good (seen once in the running-stream test above)."""
    from chispa import assert_df_equality

    from pipelines.gold.build import held_open

    schema = "tracking_id string, is_open boolean, open_slot long, adds long"
    rows = spark.createDataFrame(
        [("held", True, 10, 1), ("late", True, 20, 2), ("done", False, None, 3)], schema)
    held = spark.createDataFrame([("held",), ("gone",)], "tracking_id string")
    expected = spark.createDataFrame([("held", True, 10, 1), ("late", False, None, 2),
                                      ("done", False, None, 3)], schema)
    assert_df_equality(rows.transform(held_open(held)), expected, ignore_row_order=True)
    assert_df_equality(rows.transform(held_open(None)), rows, ignore_row_order=True)  # no stream yet
