"""``funnelhouse maintain``: compaction keeps every row and leaves one file per partition;
VACUUM deletes only files older than the retention; bronze loses the ingest days past its
retention; a dry run changes nothing."""

from datetime import date, timedelta
from pathlib import Path

from deltalake import DeltaTable
from helpers import lake_copy
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.jobs.maintain import maintain


def _files_on_disk(path: str) -> set[Path]:
    return {p for p in Path(path).rglob("*.parquet")}


def test_compaction_keeps_the_rows_and_vacuum_deletes_the_old_files(sample_lake, tmp_path):
    s = lake_copy(sample_lake, tmp_path)
    s = s.model_copy(update={"maintenance": s.maintenance.model_copy(
        update={"vacuum_retention": timedelta(0)})})
    silver = s.table("silver/events")
    before = DeltaTable(silver).to_pyarrow_table().sort_by("event_id")
    partitions = {tuple(p.items()) for p in DeltaTable(silver).partitions()}
    original = set(DeltaTable(silver).file_uris())
    files = len(original)
    assert files > len(partitions)  # several micro-batches per day: something to compact

    done = {m.table: m for m in maintain(s)}

    table = DeltaTable(silver)
    assert table.to_pyarrow_table().sort_by("event_id").equals(before)
    assert done["silver/events"].files_before == files
    assert len(table.file_uris()) == done["silver/events"].files_after == len(partitions)
    untouched = original & set(table.file_uris())  # a partition's lone file is not rewritten
    assert done["silver/events"].vacuumed == files - len(untouched)  # retention 0: the rest goes
    assert _files_on_disk(silver) == {Path(u) for u in table.file_uris()}
    assert table.history(1)[0]["operation"] == "VACUUM END"


def test_dry_run_changes_nothing(sample_lake, tmp_path):
    s = lake_copy(sample_lake, tmp_path)
    on_disk = _files_on_disk(s.lake)
    result = CliRunner().invoke(app, ["maintain", "--lake", s.lake, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Maintenance (dry run)" in result.output and "silver/events" in result.output
    assert _files_on_disk(s.lake) == on_disk


def test_bronze_days_past_the_retention_are_deleted_and_vacuumed(sample_lake, tmp_path):
    """The sample's bronze is one ingest day (today's run); maintained as of 31 days later with
    30 days' retention, every row goes, and VACUUM (retention 0) removes the files; as of 30
    days later, nothing goes."""
    s = lake_copy(sample_lake, tmp_path)
    s = s.model_copy(update={"maintenance": s.maintenance.model_copy(
        update={"vacuum_retention": timedelta(0), "bronze_retention": timedelta(days=30)})})
    bronze = s.table("bronze/events")
    days = {p["ingest_date"] for p in DeltaTable(bronze).partitions()}
    rows = DeltaTable(bronze).to_pyarrow_table().num_rows
    assert len(days) == 1 and rows > 14_000
    ingested = date.fromisoformat(days.pop())
    kept = {m.table: m for m in maintain(s, today=ingested + timedelta(days=30))}
    assert kept["bronze/events"].expired == 0 and DeltaTable(bronze).to_pyarrow_table().num_rows == rows
    assert {m.table: m for m in maintain(s, today=ingested + timedelta(days=31), dry_run=True)
            }["bronze/events"].expired == rows
    gone = {m.table: m for m in maintain(s, today=ingested + timedelta(days=31))}
    assert gone["bronze/events"].expired == rows
    assert DeltaTable(bronze).to_pyarrow_table().num_rows == 0
    assert _files_on_disk(bronze) == set()
    assert DeltaTable(s.table("silver/events")).to_pyarrow_table().num_rows > 0  # silver is untouched
