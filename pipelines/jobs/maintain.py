"""Scheduled table maintenance: compact small files (OPTIMIZE), then delete the files no
version within the retention still needs (VACUUM).

Streaming writes leave many small files: one per partition per micro-batch in silver, one per
delta-rs commit in gold. Reads slow down with their count, not with the data. ``funnelhouse
maintain`` compacts every table of the lake with delta-rs (no Spark, no JVM), partition by
partition, and commits the result with ``dataChange = false``, so a running stream's readers
(gold reading silver) skip it. Gold tables are compacted under the gold lease
(``io/lease.py``), so a gold micro-batch's MERGE never races a compaction of its table.

VACUUM then deletes the files that left the table more than ``maintenance.vacuum_retention``
ago. Keep that longer than the longest a stream may lag or stay stopped: a stream restarted
from an older checkpoint needs the files of the versions it has not read yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from deltalake import DeltaTable

from pipelines import tables as T
from pipelines.config import Settings
from pipelines.io.lease import lease
from pipelines.io.ledger import rs_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Maintained:
    table: str
    files_before: int
    files_after: int
    vacuumed: int


def _exists(path: str) -> bool:
    return "://" in path or (Path(path) / "_delta_log").is_dir()


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


def maintain(s: Settings, dry_run: bool = False) -> list[Maintained]:
    """Every table of the lake that exists, bronze to gold."""
    done = []
    for t in T.ALL:
        path = s.table(t.name)
        if not _exists(path):
            continue
        if t in T.GOLD_STREAM:
            with lease(s.lake, who="maintain"):
                done.append(maintain_table(path, t.name, s, dry_run))
        else:
            done.append(maintain_table(path, t.name, s, dry_run))
    return done
