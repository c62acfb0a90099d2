"""The fraud query on the sample: every injected burst flagged, nobody else, same as batch,
and state that empties out."""

import json
import sys
from pathlib import Path

from helpers import SAMPLE, assert_same_rows, lake_copy, read
from pyspark.sql import functions as F

from pipelines.jobs.run import run_available_now
from pipelines.privacy import hash_ip, ip_salt
from pipelines.stateful.fraud import decode, fraud_flags_batch
from pipelines.stateful.gold import kept
from pipelines.stateful.state_files import StateFiles
from pipelines.streams import CHECKPOINTS, QUERY
from pipelines.streams.gold import gold_processors

TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())


def test_every_injected_burst_is_flagged_and_nothing_else(spark, sample_lake):
    flags = read(spark, sample_lake, "gold/fraud_flags").collect()
    got = {(f.rule, f.entity_type, f.entity_id): f for f in flags}
    key = ip_salt(sample_lake.lake)  # the truth names raw IPs; flags carry their keyed hash
    expected = {(b["rule"], b["entity_type"], hash_ip(b["entity_id"], key) if b["entity_type"] == "ip"
                 else b["entity_id"]): b for b in TRUTH["fraud_bursts"]}
    assert set(got) == set(expected)  # recall 1.0 and precision 1.0
    assert len(flags) == len(expected)  # one flag per burst
    for key, burst in expected.items():
        flag = got[key]
        assert flag.event_count == burst["event_count"]
        assert flag.evidence_event_ids == burst["event_ids"]
        assert flag.first_event_time.isoformat(timespec="milliseconds") + "Z" == burst["first_event_time"]
        assert flag.last_event_time.isoformat(timespec="milliseconds") + "Z" == burst["last_event_time"]
        if burst["rule"] == "R2":
            assert flag.measure_value == burst["quantity"]


def test_stream_and_batch_flags_are_identical(spark, sample_lake):
    silver = read(spark, sample_lake, "silver/events").where(~F.col("late"))
    assert_same_rows(read(spark, sample_lake, "gold/fraud_flags"),
                         fraud_flags_batch(silver, sample_lake.fraud), precision=None)


def _held_events(s) -> list[int]:
    """Event times held in the fraud processor's state, read from the gold checkpoint's newest
    state file: the open bursts' events."""
    held, _ = StateFiles(Path(s.checkpoint(CHECKPOINTS[QUERY])), gold_processors(s)).load(sys.maxsize)
    return kept(held["fraud"].values[0], decode)["t"].to_pylist() if "fraud" in held else []


def test_state_holds_only_bursts_still_open(spark, sample_lake):
    s = sample_lake
    held = _held_events(s)
    latest = read(spark, s, "silver/events").agg(F.max(F.unix_millis("event_time"))).first()[0]
    horizon = latest - (s.stream.watermark_delay.total_seconds() + 10) * 1000
    # Only events the watermark has not yet passed (plus one window) are held.
    assert held and all(t >= horizon - 10_000 for t in held)


def test_state_empties_after_a_quiet_period(spark, sample_lake, tmp_path):
    s = lake_copy(sample_lake, tmp_path)
    assert len(_held_events(s)) > 0
    # An hour of silence, then one page view lands: the watermark passes every open burst.
    (Path(s.input) / "quiet-1.jsonl").write_text(json.dumps({
        "event_id": "quiet-1", "event_type": "landing_page_view", "event_time": "2026-11-02T13:30:00.000Z",
        "user_id": "u-quiet", "tracking_id": "t-quiet", "ip": "10.0.0.1", "user_agent": "test"}) + "\n")
    run_available_now(spark, s)
    assert _held_events(s) == []
    assert read(spark, s, "gold/fraud_flags").count() == len(TRUTH["fraud_bursts"])
