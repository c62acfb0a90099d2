"""Where a Delta stream stands: ``sources.unread_appends`` on hand-written logs and checkpoints."""

import json
from pathlib import Path

import pytest

from pipelines.io.sources import unread_appends


def _commit(table: Path, version: int, *actions: dict) -> None:
    log = table / "_delta_log"
    log.mkdir(parents=True, exist_ok=True)
    lines = [{"commitInfo": {"operation": "WRITE"}}, *actions]
    (log / f"{version:020d}.json").write_text("\n".join(json.dumps(a) for a in lines) + "\n")


def _add(path: str, data_change: bool = True) -> dict:
    return {"add": {"path": path, "partitionValues": {}, "size": 1, "modificationTime": 0,
                    "dataChange": data_change}}


def _remove(path: str, data_change: bool = True) -> dict:
    return {"remove": {"path": path, "dataChange": data_change}}


def _batch(checkpoint: Path, batch: int, version: int, index: int, committed: bool = True,
           starting: bool = False) -> None:
    for d in ("offsets", "commits"):
        (checkpoint / d).mkdir(parents=True, exist_ok=True)
    offset = {"sourceVersion": 1, "reservoirId": "r", "reservoirVersion": version, "index": index,
              "isStartingVersion": starting}
    (checkpoint / "offsets" / str(batch)).write_text(f'v1\n{{"batchWatermarkMs":0}}\n{json.dumps(offset)}')
    if committed:
        (checkpoint / "commits" / str(batch)).write_text('v1\n{"nextBatchWatermarkMs":0}')


@pytest.fixture
def table(tmp_path: Path) -> Path:
    t = tmp_path / "events"
    _commit(t, 0, {"metaData": {"id": "r"}})
    _commit(t, 1, _add("d=1/a.parquet"), _add("d=2/b.parquet"))
    _commit(t, 2, _add("d=1/c.parquet"))
    # a backfill's rewrite: removes rows, so the stream (skipChangeCommits) never reads it
    _commit(t, 3, _remove("d=1/a.parquet"), _remove("d=1/c.parquet"), _add("d=1/r.parquet"))
    _commit(t, 4, _add("d=2/e%3D1.parquet"), _add("d=2/f.parquet"))
    # OPTIMIZE: no data change, nothing for the stream
    _commit(t, 5, _remove("d=2/e%3D1.parquet", False), _remove("d=2/f.parquet", False),
            _add("d=2/g.parquet", False))
    return t


def test_no_committed_batch_is_none(table, tmp_path):
    assert unread_appends(table, tmp_path / "never") is None
    _batch(tmp_path / "ck", 0, 2, -1, committed=False)
    assert unread_appends(table, tmp_path / "ck") is None


def test_appends_after_the_last_committed_offset_skipping_rewrites(table, tmp_path):
    ck = tmp_path / "ck"
    _batch(ck, 0, 2, -1)                   # read versions 0 and 1
    _batch(ck, 1, 5, -1, committed=False)  # planned, not committed: runs again
    assert unread_appends(table, ck) == ["d=1/c.parquet", "d=2/e=1.parquet", "d=2/f.parquet"]


def test_files_after_the_index_within_the_offsets_version(table, tmp_path):
    ck = tmp_path / "ck"
    _batch(ck, 0, 4, 0)  # took the first file of version 4
    assert unread_appends(table, ck) == ["d=2/f.parquet"]
    _batch(ck, 1, 4, 9223372036854775807)  # the source's END_INDEX: all of version 4
    assert unread_appends(table, ck) == []
    _batch(ck, 2, 4, -20)  # a schema-change mark before version 4's files
    assert unread_appends(table, ck) == ["d=2/e=1.parquet", "d=2/f.parquet"]
    _batch(ck, 3, 6, -1)  # caught up
    assert unread_appends(table, ck) == []


def test_a_stream_mid_way_through_its_first_snapshot_is_refused(table, tmp_path):
    ck = tmp_path / "ck"
    _batch(ck, 0, 2, 0, starting=True)
    with pytest.raises(RuntimeError, match="first snapshot"):
        unread_appends(table, ck)
