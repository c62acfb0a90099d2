"""What a Delta stream has still to read: ``sources.unread_appends`` on hand-written logs and offsets."""

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


def _offset(tmp_path: Path, version: int, index: int, starting: bool = False) -> Path:
    """A checkpoint's ``offsets/<batch>`` file ending at (version, index)."""
    end = {"sourceVersion": 1, "reservoirId": "r", "reservoirVersion": version, "index": index,
           "isStartingVersion": starting}
    path = tmp_path / "offsets" / "7"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'v1\n{{"batchWatermarkMs":0}}\n{json.dumps(end)}')
    return path


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


def test_appends_after_the_offset_skipping_rewrites_and_compaction(table, tmp_path):
    # read versions 0 and 1; 3 removes rows (skipped), 5 is OPTIMIZE (no data change)
    assert unread_appends(table, _offset(tmp_path, 2, -1)) == [
        "d=1/c.parquet", "d=2/e=1.parquet", "d=2/f.parquet"]


def test_files_after_the_index_within_the_offsets_version(table, tmp_path):
    assert unread_appends(table, _offset(tmp_path, 4, 0)) == ["d=2/f.parquet"]  # took version 4's first
    assert unread_appends(table, _offset(tmp_path, 4, 9223372036854775807)) == []  # END_INDEX: all of 4
    # a schema-change mark before version 4's files
    assert unread_appends(table, _offset(tmp_path, 4, -20)) == ["d=2/e=1.parquet", "d=2/f.parquet"]
    assert unread_appends(table, _offset(tmp_path, 6, -1)) == []  # caught up


def test_a_stream_mid_way_through_its_first_snapshot_is_refused(table, tmp_path):
    with pytest.raises(RuntimeError, match="first snapshot"):
        unread_appends(table, _offset(tmp_path, 2, 0, starting=True))
