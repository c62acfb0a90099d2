"""The driver's Delta tables (``io/delta_rs.opened``): a table object kept between
micro-batches still reads what other writers committed, and a table made again at the same
path is read afresh; the ledger of committed batches; columns read from the log."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Field, write_deltalake

from pipelines import tables as T
from pipelines.io.delta_log import column_names
from pipelines.io.delta_rs import Commit, arrow_schema, hooks, opened, read
from pipelines.io.ledger import Ledger, last_committed, marker


def _ids(path: str) -> list[int]:
    return sorted(read(path)["id"].to_pylist())


def test_a_kept_table_reads_commits_another_writer_made(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": [1]}))
    assert _ids(path) == [1]
    kept = opened(path)
    write_deltalake(path, pa.table({"id": [2]}), mode="append")  # not through the kept object
    assert _ids(path) == [1, 2]
    assert opened(path) is kept  # brought up to date, not loaded again


def test_a_table_made_again_at_the_same_path_is_read_afresh(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": [1]}))
    write_deltalake(path, pa.table({"id": [2]}), mode="append")
    assert _ids(path) == [1, 2]
    shutil.rmtree(path)
    write_deltalake(path, pa.table({"id": [7]}))  # version 0 again
    write_deltalake(path, pa.table({"id": [8]}), mode="append")  # version 1: the version kept
    assert _ids(path) == [7, 8]


def test_a_table_written_through_its_kept_object_is_kept_and_reads_the_write(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": [1]}))
    kept = opened(path)
    write_deltalake(kept, pa.table({"id": [2]}), mode="append")  # moves the object's version on
    assert opened(path) is kept
    write_deltalake(path, pa.table({"id": [3]}), mode="append")  # and another writer's commit
    assert _ids(path) == [1, 2, 3]
    assert opened(path) is kept


def test_a_kept_table_lists_its_log_only_when_another_writer_committed(tmp_path, monkeypatch):
    """Bringing a kept object up to date lists the whole ``_delta_log`` folder (its cost grows
    with every commit the table keeps), so it is done only when a newer commit exists."""
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": [1]}))
    kept = opened(path)
    calls = []
    real = type(kept).update_incremental
    monkeypatch.setattr(type(kept), "update_incremental", lambda self: calls.append(1) or real(self))
    write_deltalake(kept, pa.table({"id": [2]}), mode="append")  # through the kept object
    assert opened(path) is kept and _ids(path) == [1, 2]
    assert calls == []
    write_deltalake(path, pa.table({"id": [3]}), mode="append")  # another writer
    assert _ids(path) == [1, 2, 3]
    assert calls == [1]
    assert _ids(path) == [1, 2, 3] and calls == [1]


def _eleven_commits(path: str, configuration: dict[str, str], seen: Callable[[], object]) -> list:
    """A results table checkpointed every 4 versions, then eleven one-row appends through
    ``Commit`` (versions 1..11; delta-rs checkpoints 3, 7 and 11): ``seen()`` after each."""
    write_deltalake(path, arrow_schema(T.QUALITY_RESULTS).empty_table(),
                    configuration={"delta.checkpointInterval": "4", **configuration})
    ledger = Ledger()
    row = arrow_schema(T.QUALITY_RESULTS).empty_table()
    row = pa.table({c: pa.nulls(1, row.schema.field(c).type) for c in row.column_names}, row.schema)
    after = []
    for batch in range(1, 12):
        Commit("test", batch, ledger).append(row, path, T.QUALITY_RESULTS)
        after.append(seen())
    return after


def test_a_kept_table_is_loaded_afresh_once_a_checkpoint_follows_its_load(tmp_path):
    """A table object walks every commit made through it on each later commit (an append
    after 1,600 of them: 150 ms against 11), so it is loaded again once delta-rs has
    checkpointed past the version it was loaded at: then the load reads that checkpoint."""
    path = str(tmp_path / "quality_results")
    objects = _eleven_commits(path, {}, lambda: id(opened(path)))
    # the object loaded at version 0 serves through version 2; version 3 is a checkpoint: a new
    # object from there, kept through 6; then one from 7 through 10; then one from 11
    changes = [v for v in range(2, 12) if objects[v - 1] != objects[v - 2]]
    assert changes == [3, 7, 11]
    assert read(path).num_rows == 11


def _logged(path: str) -> list[int]:
    """The versions whose commit file the table's ``_delta_log`` folder holds."""
    return sorted(int(p.name.split(".")[0]) for p in (Path(path) / "_delta_log").glob("*.json"))


def test_streaming_commits_delete_expired_log_entries_only_when_they_checkpoint(tmp_path):
    """A commit checkpoints every ``delta.checkpointInterval`` versions and deletes the log
    entries older than the retention only then, as Spark's Delta does; delta-rs alone would
    list the whole log folder after every commit to look for them."""
    path = str(tmp_path / "quality_results")
    firsts = _eleven_commits(path, {"delta.logRetentionDuration": "interval 0 seconds"},
                             lambda: _logged(path)[0])
    assert firsts == [0, 0, 3, 3, 3, 3, 7, 7, 7, 7, 11]
    assert read(path).num_rows == 11


def test_a_commit_looks_for_expired_log_entries_only_when_it_checkpoints(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": [0]}), configuration={"delta.checkpointInterval": "3"})
    cleanups = []
    for i in range(1, 8):  # versions 1..7: checkpoints at 2 and 5
        dt = opened(path)
        cleanups.append(hooks(dt).cleanup_expired_logs)
        write_deltalake(dt, pa.table({"id": [i]}), mode="append", post_commithook_properties=hooks(dt))
    # None: the table's ``delta.enableExpiredLogCleanup`` decides (true unless set)
    assert cleanups == [False, None, False, False, None, False, False]
    assert sorted(p.name for p in (Path(path) / "_delta_log").glob("*.checkpoint.parquet")) == [
        "00000000000000000002.checkpoint.parquet", "00000000000000000005.checkpoint.parquet"]


def test_the_ledger_answers_from_the_tables_transaction_ids_without_reading_its_history(
        tmp_path, monkeypatch):
    """Each commit carries its batch as a Delta transaction id, which the loaded table holds:
    a restarted writer learns its last batch without reading the table's history, skips a
    replay of it and writes the next."""
    path = str(tmp_path / "quality_results")
    _eleven_commits(path, {}, lambda: None)
    assert DeltaTable(path).transaction_version("test") == 11
    monkeypatch.setattr(DeltaTable, "history", lambda *a, **k: pytest.fail("history was read"))
    assert last_committed(path, "test") == 11
    row = read(path).slice(0, 1)
    ledger = Ledger()  # a restarted writer
    assert not Commit("test", 11, ledger).append(row, path, T.QUALITY_RESULTS)
    assert Commit("test", 12, ledger).append(row, path, T.QUALITY_RESULTS)
    assert read(path).num_rows == 12 and DeltaTable(path).transaction_version("test") == 12


def test_a_table_committed_to_before_transaction_ids_is_answered_from_its_history(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": [1]}),
                    commit_properties=CommitProperties(custom_metadata={"userMetadata": marker("old", 4)}))
    write_deltalake(path, pa.table({"id": [2]}), mode="append")  # another writer after it
    assert DeltaTable(path).transaction_version("old") is None
    assert last_committed(path, "old") == 4 and last_committed(path, "other") == -1


def test_a_tables_columns_are_read_from_the_log_after_its_checkpoint(tmp_path):
    """``tables.ensure`` checks a stored table's columns from its log: the commits after the
    newest checkpoint, else that checkpoint; a column added later is seen."""
    path = str(tmp_path / "quality_results")
    fresh = str(tmp_path / "fresh")
    write_deltalake(fresh, pa.table({"a": [1], "b": ["x"]}))
    assert column_names(fresh) == ["a", "b"]  # no checkpoint: the first commit's
    _eleven_commits(path, {}, lambda: None)  # checkpointed at version 11, the newest
    assert (Path(path) / "_delta_log" / "_last_checkpoint").exists()
    assert column_names(path) == T.QUALITY_RESULTS.columns
    DeltaTable(path).alter.add_columns(Field("note", "string"))
    assert column_names(path) == [*T.QUALITY_RESULTS.columns, "note"]


def test_a_write_the_ledger_knows_is_skipped_without_loading_the_table(tmp_path, monkeypatch):
    """A replayed write the ledger already answers loads nothing: on an object store each
    load of a table reads its log afresh."""
    from pipelines.io import delta_rs

    path = str(tmp_path / "quality_results")
    _eleven_commits(path, {}, lambda: None)
    ledger = Ledger()
    ledger.record(path, "test", 11)
    row = read(path).slice(0, 1)
    monkeypatch.setattr(delta_rs, "opened", lambda p: pytest.fail("the table was loaded"))
    assert not Commit("test", 11, ledger).append(row, path, T.QUALITY_RESULTS)


def test_columns_are_left_to_a_load_when_the_checkpoint_named_is_not_there(tmp_path):
    path = str(tmp_path / "quality_results")
    _eleven_commits(path, {}, lambda: None)
    (Path(path) / "_delta_log" / f"{11:020d}.checkpoint.parquet").unlink()
    assert column_names(path) is None
