"""Files -> bronze -> silver with availableNow, checked against the generator's ground truth."""

import json
import re
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import SAMPLE, copy_sample, read, run_failing_at
from pyspark.sql import functions as F

from pipelines.config import load_settings
from pipelines.jobs.run import run_available_now
from pipelines.silver import BRONZE
from pipelines.streams import CHECKPOINTS, QUERY

TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())


def _by_reason(spark, s) -> dict[str, int]:
    rows = read(spark, s, "silver/quarantine").groupBy("reason").count().collect()
    return {r["reason"]: r["count"] for r in rows}


def test_sample_counts_match_the_ground_truth(spark, sample_lake):
    s = sample_lake  # streamed two files per micro-batch

    assert read(spark, s, "bronze/events").count() == TRUTH["lines"]
    silver = read(spark, s, "silver/events")
    assert silver.count() == TRUTH["valid_unique_events"]
    assert silver.select("event_id").distinct().count() == TRUTH["valid_unique_events"]
    assert _by_reason(spark, s) == TRUTH["malformed_by_reason"]
    by_type = {r["event_type"]: r["count"] for r in silver.groupBy("event_type").count().collect()}
    assert by_type == TRUTH["events_by_type"]
    # Late events stay in silver; the ones flagged are among those injected as late.
    late = {r.event_id for r in silver.where("late").select("event_id").collect()}
    assert late and late <= set(TRUTH["late_event_ids"])
    assert silver.where(F.col("event_id").isin(TRUTH["late_event_ids"])).count() == len(
        TRUTH["late_event_ids"])


@pytest.mark.slow
def test_restart_adds_new_files_without_duplicates(spark, lake_settings):
    s = lake_settings
    copy_sample(s.input, slice(0, 3))
    run_available_now(spark, s)
    first = read(spark, s, "silver/events").count()
    assert 0 < first < TRUTH["valid_unique_events"]

    copy_sample(s.input, slice(3, None))
    run_available_now(spark, s)
    # A run with nothing new changes nothing.
    run_available_now(spark, s)

    silver = read(spark, s, "silver/events")
    assert silver.count() == TRUTH["valid_unique_events"]
    assert silver.select("event_id").distinct().count() == TRUTH["valid_unique_events"]
    assert read(spark, s, "silver/quarantine").count() == TRUTH["malformed_lines"]
    assert read(spark, s, "bronze/events").count() == TRUTH["lines"]


def _archived(s, names: set[str], timeout: float = 20) -> set[str]:
    """The landing files below ``stream.clean_source``'s archive (Spark keeps each file's own
    path below it), once ``names`` are all there (Spark moves them on a thread of its own)."""
    folder = Path(s.source_archive) / Path(s.input).relative_to("/")
    deadline = time.monotonic() + timeout
    while {p.name for p in folder.glob("*.jsonl")} < names and time.monotonic() < deadline:
        time.sleep(0.2)
    return {p.name for p in folder.glob("*.jsonl")}


@pytest.mark.slow
def test_archived_landing_files_leave_the_folder_and_every_event_lands_once(spark, tmp_path):
    """``stream.clean_source: archive``: a file leaves the landing folder once its micro-batch
    has committed (Spark moves it when it plans the next one), so the stream lists only the
    files it has not read; a restart reads on, and nothing is lost or read twice."""
    (tmp_path / "landing").mkdir()
    s = load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing",
                                 "spark": {"shuffle_partitions": 2},
                                 "stream": {"max_files_per_trigger": 1, "clean_source": "archive"}},
                      environ={}, local=False)
    first = [p.name for p in copy_sample(s.input, slice(0, 3))]
    run_available_now(spark, s)
    assert _archived(s, set(first[:2])) == set(first[:2])  # one batch a file; the last one's stays
    assert {p.name for p in Path(s.input).glob("*.jsonl")} == {first[2]}

    later = [p.name for p in copy_sample(s.input, slice(3, None))]
    run_available_now(spark, s)
    assert _archived(s, {*first, *later[:-1]}) == {*first, *later[:-1]}
    assert {p.name for p in Path(s.input).glob("*.jsonl")} == {later[-1]}
    assert read(spark, s, "bronze/events").count() == TRUTH["lines"]
    silver = read(spark, s, "silver/events")
    assert silver.count() == TRUTH["valid_unique_events"]
    assert silver.select("event_id").distinct().count() == TRUTH["valid_unique_events"]
    assert read(spark, s, "silver/quarantine").count() == TRUTH["malformed_lines"]


@pytest.mark.slow
def test_a_replayed_batch_writes_nothing_twice(spark, lake_settings):
    """Crash after the sinks committed but before the checkpoint did: the batch replays."""
    s = lake_settings
    copy_sample(s.input)
    run_available_now(spark, s)
    commits = Path(s.checkpoint(CHECKPOINTS[QUERY])) / "commits"
    last = max(commits.glob("[0-9]*"), key=lambda p: int(p.name))
    last.unlink()
    shutil.rmtree(commits / f".{last.name}.crc", ignore_errors=True)
    (commits / f".{last.name}.crc").unlink(missing_ok=True)

    run_available_now(spark, s)
    assert read(spark, s, "silver/events").count() == TRUTH["valid_unique_events"]
    assert read(spark, s, "silver/quarantine").count() == TRUTH["malformed_lines"]


@pytest.mark.slow
def test_a_kill_while_the_first_offset_was_written_does_not_stop_the_restart(spark, lake_settings):
    """What a SIGKILL left once (tests/test_crash.py, seed 5387): ``offsets/`` holding only the
    temporary file of batch 0. Spark alone refuses to restart on it (the folder is not empty)."""
    s = lake_settings
    copy_sample(s.input, slice(0, 1))
    run_available_now(spark, s)
    first = read(spark, s, "silver/events").count()
    checkpoint = Path(s.checkpoint(CHECKPOINTS[QUERY]))
    for done in (checkpoint / "commits").iterdir():  # batch 0 never finished...
        done.unlink()
    shutil.rmtree(checkpoint / "state", ignore_errors=True)
    offsets = checkpoint / "offsets"  # ...and its offset file was still being written
    (offsets / "0").rename(offsets / ".0.f633ce43-3921-4240-9974-3cd8d31de52f.tmp")
    (offsets / ".0.crc").unlink(missing_ok=True)
    (offsets / "..0.f633ce43-3921-4240-9974-3cd8d31de52f.tmp.crc").write_bytes(b"")
    run_available_now(spark, s)
    assert read(spark, s, "silver/events").count() == first  # batch 0 again: nothing doubled
    assert (offsets / "0").exists() and not any(".tmp" in f.name for f in offsets.iterdir())


@pytest.mark.parametrize(("cap", "batches"), [(1_500, [["f0"], ["f1"], ["f2"]]),
                                              (2_500, [["f0", "f1"], ["f2"]])])
def test_a_byte_cap_bounds_each_micro_batch_by_whole_files(spark, tmp_path, cap, batches):
    """``stream.max_bytes_per_trigger``: three 1,000-byte files, oldest first; a batch takes
    whole files while they fit (and always at least one)."""
    import os

    from pipelines.io.sources import read_landing

    landing = tmp_path / "landing"
    landing.mkdir()
    for i in range(3):
        f = landing / f"f{i}.jsonl"
        f.write_text("x" * 999 + "\n")
        os.utime(f, (1_800_000_000 + i, 1_800_000_000 + i))
    seen: list[list[str]] = []

    def batch(df, _):
        seen.append(sorted(Path(r.source_file).stem for r in df.select("source_file").distinct().collect()))

    query = (read_landing(spark, str(landing), streaming=True, max_bytes_per_trigger=cap).writeStream
             .foreachBatch(batch).trigger(availableNow=True)
             .option("checkpointLocation", str(tmp_path / "checkpoint")).start())
    query.awaitTermination()
    assert seen == batches


def test_bronze_rows_are_the_collected_struct_unnested_in_place():
    from pipelines.streams.pipeline import _unnested

    kind = pa.struct([("raw", pa.string()), ("kafka_offset", pa.int64())])
    column = pa.chunked_array([pa.array([{"raw": "a", "kafka_offset": 1}], kind),
                               pa.array([{"raw": "b", "kafka_offset": None}], kind)])
    rows = _unnested(column)
    assert rows.to_pylist() == [{"raw": "a", "kafka_offset": 1}, {"raw": "b", "kafka_offset": None}]
    # no copy: the table's text is the collected batch's own buffer
    assert rows["raw"].chunk(1).buffers()[2].address == column.chunk(1).field("raw").buffers()[2].address
    empty = _unnested(pa.chunked_array([], kind))  # a micro-batch with no rows has no chunk
    assert empty.num_rows == 0 and empty.schema == pa.schema(list(kind))


def test_a_failed_append_fails_the_batch_and_the_restart_writes_it(spark, lake_settings, monkeypatch):
    """Bronze's append runs on the writer thread, beside silver and gold: its failure must still
    fail the micro-batch, and the replay must write what it lacks (and nothing twice)."""
    from pipelines.streams.bronze import BronzeStep

    s = lake_settings
    copy_sample(s.input)
    run_failing_at(spark, s, monkeypatch, BronzeStep, "apply", "no space left on device (test)")
    run_available_now(spark, s)
    assert read(spark, s, "bronze/events").count() == TRUTH["lines"]
    assert read(spark, s, "silver/events").count() == TRUTH["valid_unique_events"]


@pytest.mark.slow
def test_every_micro_batch_collects_the_same_query(spark, tmp_path, monkeypatch):
    """The query's projection holds nothing of its micro-batch (no watermark, no clock), so
    Spark generates, and the JVM compiles, its code once rather than every micro-batch; the
    driver adds the late marks and ``quarantine_time``."""
    from pyspark.sql.classic.dataframe import DataFrame

    s = load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing",
                                 "stream": {"max_files_per_trigger": 1}}, environ={}, local=False)
    copy_sample(s.input, slice(0, 3))
    plans, collect = [], DataFrame.toArrow

    def recorded(df):
        plan = df._jdf.queryExecution().optimizedPlan().toString()
        if BRONZE in plan:  # the micro-batch's collect, not a test's or a helper's
            plans.append(re.sub(r"#\d+L?", "", plan))  # expression ids aside
        return collect(df)

    monkeypatch.setattr(DataFrame, "toArrow", recorded)
    run_available_now(spark, s)
    assert len(plans) == 3
    assert plans[1] == plans[0] and plans[2] == plans[0]
    quarantine = read(spark, s, "silver/quarantine")
    assert quarantine.count() > 0 and quarantine.where("quarantine_time IS NULL").count() == 0
    assert read(spark, s, "silver/events").where("late IS NULL").count() == 0
