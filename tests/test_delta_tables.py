"""The driver's Delta tables (``io/delta_rs.opened``): a table object kept between
micro-batches still reads what other writers committed, and a table made again at the same
path is read afresh."""

import shutil

import pyarrow as pa
from deltalake import write_deltalake

from pipelines.io.delta_rs import opened, read


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
