"""Silver's driver-side dedupe state (``stateful/dedupe.py``) on hand-built deliveries: the
first delivery of an id wins, within a batch and across batches, for ``window`` of arrival
time; a replayed batch and a restarted job drop exactly what the first run dropped."""

from datetime import datetime, timedelta

import pyarrow as pa

from pipelines.stateful.dedupe import Dedupe

T0 = datetime(2026, 11, 2, 10, 0)


def _rows(*deliveries: tuple[str, int]) -> pa.Table:
    """(event_id, seconds after T0 it arrived)."""
    return pa.table({"event_id": [d[0] for d in deliveries],
                     "ingest_time": pa.array([T0 + timedelta(seconds=d[1]) for d in deliveries],
                                             pa.timestamp("us", "UTC"))})


def _kept(d: Dedupe, batch_id: int, *deliveries: tuple[str, int]) -> list[bool]:
    return d.apply(_rows(*deliveries), batch_id).to_pylist()


def test_the_first_delivery_in_a_batch_wins(tmp_path):
    d = Dedupe(tmp_path, timedelta(minutes=10))
    # b arrives twice, the later copy first in the batch: the earlier arrival is kept.
    assert _kept(d, 0, ("a", 0), ("b", 5), ("b", 1), ("c", 2), ("a", 3)) == [True, False, True, True, False]


def test_a_redelivery_within_the_window_is_dropped_and_after_it_kept(tmp_path):
    d = Dedupe(tmp_path, timedelta(minutes=10))
    assert _kept(d, 0, ("a", 0), ("b", 0)) == [True, True]
    assert _kept(d, 1, ("a", 60), ("c", 60)) == [False, True]
    # 11 minutes after a's first arrival: the window (10 min behind the newest arrival) has
    # moved past it, so a new delivery of a counts again; b's too, c (60 s) is still held.
    assert _kept(d, 2, ("x", 660)) == [True]
    assert _kept(d, 3, ("a", 661), ("b", 661), ("c", 661)) == [True, True, False]


def test_a_replayed_batch_and_a_restart_drop_what_the_first_run_dropped(tmp_path):
    first = Dedupe(tmp_path, timedelta(minutes=10))
    assert _kept(first, 0, ("a", 0), ("b", 0)) == [True, True]
    assert _kept(first, 1, ("a", 5), ("c", 5)) == [False, True]
    # Batch 1 again in the same process (Spark retried it), then in a new one (a restart):
    # both start from the state after batch 0, not after the first run of batch 1.
    assert _kept(first, 1, ("a", 5), ("c", 5)) == [False, True]
    assert _kept(Dedupe(tmp_path, timedelta(minutes=10)), 1, ("a", 5), ("c", 5)) == [False, True]
    # A restart at batch 2 reads both files: a, b and c are all held.
    assert _kept(Dedupe(tmp_path, timedelta(minutes=10)), 2, ("a", 9), ("b", 9), ("c", 9), ("d", 9)) == [
        False, False, False, True]


def test_files_whose_ids_left_the_window_are_deleted(tmp_path):
    d = Dedupe(tmp_path, timedelta(seconds=60))
    _kept(d, 0, ("a", 0))
    _kept(d, 1, ("b", 120))  # a is out of the window now
    _kept(d, 2, ("c", 121))  # batch 0's file had left the window before this batch: it goes
    assert sorted(f.name for f in (tmp_path / "dedupe").iterdir()) == ["1.arrow", "2.arrow"]


def test_a_batch_whose_ids_straddle_the_window_keeps_only_those_inside(tmp_path):
    d = Dedupe(tmp_path, timedelta(seconds=60))
    _kept(d, 0, ("a", 0), ("b", 50))
    _kept(d, 1, ("c", 100))  # the window now starts at 40: a left it, b is still inside
    assert _kept(d, 2, ("a", 101), ("b", 101)) == [True, False]
