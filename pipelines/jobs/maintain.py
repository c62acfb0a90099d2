"""Scheduled table maintenance: compact small files (OPTIMIZE), then delete the files no
version within the retention still needs (VACUUM).

Streaming writes leave many small files: one per partition per micro-batch in silver, one per
delta-rs commit in gold. Reads slow down with their count, not with the data. ``funnelhouse
maintain`` compacts every table of the lake with delta-rs (no Spark, no JVM), partition by
partition, and commits the result with ``dataChange = false``, so a running stream's readers
(gold reading silver) skip it. Gold tables are compacted under the gold lease
(``io/lease.py``), so a gold micro-batch's MERGE never races a compaction of its table.

A table whose rows add up (``Table.fold``: ``gold/user_profile``, ``gold/ip_profile``) gets one
row appended per key each micro-batch touched; maintenance first folds them into one row per
key (``io/folds.py``), in one overwrite under the gold lease, so the stream's next append lands
beside the folded rows and loses nothing.

VACUUM then deletes the files that left the table more than ``maintenance.vacuum_retention``
ago. Keep that longer than the longest a stream may lag or stay stopped: a stream restarted
from an older checkpoint needs the files of the versions it has not read yet.

Before that, bronze loses the ``ingest_date`` partitions older than
``maintenance.bronze_retention`` (a delete; the raw lines, and so the raw IP addresses, are
gone from disk once VACUUM passes them). No stream reads bronze; a backfill of older dates
reads the landing archive instead (docs/backfill.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from deltalake import DeltaTable, write_deltalake

from pipelines import tables as T
from pipelines.config import Settings
from pipelines.io.delta_rs import arrow_schema
from pipelines.io.folds import fold_arrow
from pipelines.io.lease import lease
from pipelines.io.ledger import rs_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Maintained:
    table: str
    files_before: int
    files_after: int
    vacuumed: int
    expired: int = 0  # rows deleted for being older than their retention (bronze)
    folded: int = 0  # rows folded away: a key's several rows made one (the profiles)


def _exists(path: str) -> bool:
    return "://" in path or (Path(path) / "_delta_log").is_dir()


def fold_table(path: str, t: T.Table, dry_run: bool = False) -> int:
    """Fold a table's rows into one per key (``Table.fold``); returns the rows folded away
    (or that would be). Nothing is written when each key has one row already."""
    table = DeltaTable(rs_uri(path))
    rows = table.to_pyarrow_table()
    folded = fold_arrow(rows, t)
    gone = rows.num_rows - folded.num_rows
    if gone and not dry_run:
        write_deltalake(table, folded.cast(arrow_schema(t)), mode="overwrite")
        log.info("%s: %d rows folded into %d", t.name, rows.num_rows, folded.num_rows)
    return gone


def maintain_table(path: str, name: str, s: Settings, dry_run: bool = False) -> Maintained:
    """Compact one table, then vacuum it; ``dry_run`` reports what vacuum would delete."""
    table = DeltaTable(rs_uri(path))
    before = len(table.file_uris())
    if not dry_run:
        table.optimize.compact(target_size=s.maintenance.target_file_size)
        table = DeltaTable(rs_uri(path))
    hours = int(s.maintenance.vacuum_retention.total_seconds() // 3600)
    deleted = table.vacuum(retention_hours=hours, dry_run=dry_run, enforce_retention_duration=False)
    after = len(table.file_uris())
    log.info("%s: %d -> %d files, %d vacuumed", name, before, after, len(deleted))
    return Maintained(name, before, after, len(deleted))


def expire_bronze(path: str, s: Settings, today: date, dry_run: bool = False) -> int:
    """Delete bronze's ``ingest_date`` partitions older than ``maintenance.bronze_retention``
    before ``today``; returns the rows deleted (or that would be)."""
    keep = s.maintenance.bronze_retention
    if keep is None:
        return 0
    cutoff = today - keep
    table = DeltaTable(rs_uri(path))
    if dry_run:
        return table.to_pyarrow_table(filters=[("ingest_date", "<", cutoff)],
                                      columns=["ingest_time"]).num_rows
    metrics = table.delete(f"ingest_date < '{cutoff.isoformat()}'")
    log.info("bronze/events: %d rows ingested before %s deleted (retention %s)",
             metrics.get("num_deleted_rows", 0), cutoff, keep)
    return int(metrics.get("num_deleted_rows", 0))


def maintain(s: Settings, dry_run: bool = False, today: date | None = None) -> list[Maintained]:
    """Every table of the lake that exists, bronze to gold; bronze's expired days first."""
    today = today or datetime.now(UTC).date()
    done = []
    for t in T.ALL:
        path = s.table(t.name)
        if not _exists(path):
            continue
        expired = expire_bronze(path, s, today, dry_run) if t is T.BRONZE_EVENTS else 0
        if t in T.GOLD_STREAM:
            with lease(s.lake, who="maintain"):
                folded = fold_table(path, t, dry_run) if t.fold else 0
                m = maintain_table(path, t.name, s, dry_run)
        else:
            folded, m = 0, maintain_table(path, t.name, s, dry_run)
        done.append(Maintained(m.table, m.files_before, m.files_after, m.vacuumed, expired, folded))
    return done
