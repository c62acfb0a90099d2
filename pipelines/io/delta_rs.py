"""Driver-side Delta writes with delta-rs: every streaming micro-batch's commits.

A gold micro-batch changes a few thousand rows: the sessions it touched, a few campaign
cells, the products it saw. Spark's Delta MERGE costs about 2.7-3 s whatever its size here
(some 19 small Spark jobs); the same upsert through delta-rs costs 0.06-0.17 s, and an append
about 0.05 s (docs/performance.md). Spark's Delta append has the same fixed cost: 2-3 s per
commit for bronze, silver and the quarantine, whatever the batch holds. So each query
collects its micro-batch's rows to the driver as Arrow (a batch's worth, not the table's) and
commits them with delta-rs. Spark still reads every table (the gold stream reads silver's
commits), and backfills still write them with Spark: both speak the same Delta protocol, and
the tables use no feature delta-rs cannot write.

Every commit carries the micro-batch marker of ``io/ledger.py``; a write the table already
holds is skipped, so a replayed micro-batch changes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.table import TableMerger
from deltalake.transaction import Transaction
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.io.delta_log import commit_file
from pipelines.io.ledger import Ledger, marker, rs_uri
from pipelines.tables import Table

log = logging.getLogger(__name__)
RETRIES = 5
CHECKPOINT_EVERY = 100  # delta-rs's checkpoint interval when the table sets none


def arrow_schema(table: Table) -> pa.Schema:
    return to_arrow_schema(table.schema, timezone="UTC")


def to_arrow(df: DataFrame, table: Table) -> pa.Table:
    """Collect ``df`` (already conformed to ``table``) to the driver as Arrow, typed as the table."""
    return df.toArrow().cast(arrow_schema(table))


def from_pandas(frame, table: Table) -> pa.Table:
    """Some of ``table``'s columns, as a pandas frame holds them, typed as the table types them."""
    schema = arrow_schema(table)
    return pa.Table.from_pandas(frame, preserve_index=False,
                                schema=pa.schema([schema.field(c) for c in frame.columns]))


# per thread: path -> (table, the version checked, that commit file's stat, the version loaded)
_opened = threading.local()


def opened(path: str) -> DeltaTable:
    """The Delta table at ``path`` as of its newest commit.

    A micro-batch reads and writes some ten tables, and loading one replays its log from the
    last checkpoint: 10-15 ms alone, several times that on a driver whose two cores are busy
    (16% of a micro-batch after five minutes at 10k ev/s; docs/performance.md). So each thread
    keeps a local table's object and brings it up to date with the commits after the one it
    holds, other writers' included. Only when there are any: delta-rs finds them by listing
    the whole ``_delta_log`` folder, whose every commit a streaming table keeps for
    ``delta.logRetentionDuration``, so the update costs more with every micro-batch the table
    has had (1 ms at 120 commits, 7-9 ms at 3,000), while the next commit's file tells the
    same in one ``stat``. The object is dropped when the commit file it was read at is gone
    or another one (the table was removed and made again), and once a checkpoint was written
    after the version it was loaded at (``_worn``). An object-store table is loaded afresh
    each time."""
    uri = rs_uri(path)
    if "://" in uri or uri.startswith("file:"):
        return DeltaTable(uri)
    cache = _opened.__dict__.setdefault("tables", {})
    held = cache.get(uri)
    # The commit the object was checked at, not its version now: a write through the object
    # moves its version on (a check of that commit's file would always miss, and load anew).
    if held is not None and _commit_stat(uri, held[1]) == held[2] and not _worn(held[0], held[3]):
        dt, loaded = held[0], held[3]
        if os.path.exists(commit_file(uri, dt.version() + 1)):  # another writer's commit
            dt.update_incremental()
    else:
        dt = DeltaTable(uri)
        loaded = dt.version()
    version = dt.version()
    cache[uri] = (dt, version, _commit_stat(uri, version), loaded)
    return dt


def _worn(dt: DeltaTable, loaded: int) -> bool:
    """Whether delta-rs has checkpointed the table since ``dt`` was loaded (at version
    ``loaded``). A table object keeps each commit made or read through it as a piece of its
    own, and every later commit walks them all: an append after 1,600 commits through one
    object took 150 ms, against 11 ms through an object loaded afresh at each checkpoint (which
    reads that checkpoint and the few commits after it)."""
    every = checkpoint_interval(dt)
    return (dt.version() + 1) // every * every - 1 > loaded  # the newest checkpointed version


def checkpoint_interval(dt: DeltaTable) -> int:
    return int(dt.metadata().configuration.get("delta.checkpointInterval", CHECKPOINT_EVERY))


def _commit_stat(uri: str, version: int) -> tuple[int, int, int] | None:
    try:
        st = os.stat(commit_file(uri, version))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read(path: str, filters: list[tuple] | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read (part of) a small table with delta-rs, without Spark. ``filters`` are pyarrow
    ``(column, op, value)`` conjunctions; partitions and file statistics prune what is read;
    only ``columns`` (all when None) are decoded."""
    return opened(path).to_pyarrow_table(filters=filters, columns=columns)


def row_count(path: str) -> int:
    """Rows in a table, from its files' statistics (no data read)."""
    adds = pa.table(opened(path).get_add_actions(flatten=True))
    return sum(adds.column("num_records").to_pylist())


def max_stat(path: str, column: str):
    """The largest value of ``column`` in a table, from its files' statistics (no data read;
    None when the table is empty or keeps no statistics for the column)."""
    adds = pa.table(opened(path).get_add_actions(flatten=True))
    name = f"max.{column}"
    if name not in adds.column_names or adds.num_rows == 0:
        return None
    value = pa.compute.max(adds.column(name)).as_py()
    return value.replace(tzinfo=None) if hasattr(value, "tzinfo") and value is not None else value


def hooks(table: DeltaTable) -> PostCommitHookProperties:
    """What a commit through ``table`` does after it lands: a checkpoint every
    ``delta.checkpointInterval`` commits, as always, and only with that checkpoint the
    cleanup of log entries older than ``delta.logRetentionDuration`` (when the table enables
    it). delta-rs would look for expired entries after every commit, by listing the whole
    ``_delta_log`` folder: a cost that grows with every micro-batch the table keeps (30 ms a
    commit at 3,000 commits, about a dozen commits a micro-batch). Spark's Delta, too, cleans
    up only when it checkpoints."""
    # the next version is one delta-rs checkpoints
    checkpoint = (table.version() + 2) % checkpoint_interval(table) == 0
    # None: the table's own ``delta.enableExpiredLogCleanup`` decides
    return PostCommitHookProperties(create_checkpoint=True,
                                    cleanup_expired_logs=None if checkpoint else False)


class Commit:
    """The micro-batch a set of writes belongs to: skips what the tables already hold."""

    def __init__(self, app_id: str, batch_id: int, ledger: Ledger):
        self.app_id, self.batch_id, self.ledger = app_id, batch_id, ledger

    def _done(self, path: str) -> bool:
        if self.ledger.has(path, self.app_id, self.batch_id, lambda: opened(path)):
            log.info("batch %d is already in %s; not written again", self.batch_id, path)
            return True
        return False

    def _props(self) -> CommitProperties:
        return CommitProperties(custom_metadata={"userMetadata": marker(self.app_id, self.batch_id)},
                                app_transactions=[Transaction(self.app_id, self.batch_id)],
                                max_commit_retries=RETRIES)

    def _committed(self, path: str) -> None:
        self.ledger.record(path, self.app_id, self.batch_id)

    def append(self, data: pa.Table, path: str, table: Table) -> bool:
        """Append ``data``; nothing (and no commit) when it is empty."""
        if data.num_rows == 0 or self._done(path):
            return False
        dt = opened(path)
        write_deltalake(dt, data.cast(arrow_schema(table)), mode="append",
                        partition_by=list(table.partition_by) or None, commit_properties=self._props(),
                        post_commithook_properties=hooks(dt))
        self._committed(path)
        return True

    def overwrite(self, data: pa.Table, path: str, table: Table, predicate: str | None = None) -> bool:
        """Replace the rows matching ``predicate`` (all rows when None) with ``data``."""
        if self._done(path):
            return False
        dt = opened(path)
        write_deltalake(dt, data.cast(arrow_schema(table)), mode="overwrite",
                        predicate=predicate, partition_by=list(table.partition_by) or None,
                        commit_properties=self._props(), post_commithook_properties=hooks(dt))
        self._committed(path)
        return True

    def merge(self, source: pa.Table, path: str, table: Table, predicate: str,
              clauses: Callable[[TableMerger], TableMerger]) -> dict | None:
        """MERGE ``source`` (alias ``s``) into the table (alias ``t``) on ``predicate``; the
        ``clauses`` add the when-matched / when-not-matched actions. Returns delta-rs's
        metrics (``num_target_rows_inserted`` and friends); None when nothing was merged
        (no rows, or the table holds this batch already)."""
        if source.num_rows == 0 or self._done(path):
            return None
        metrics = merge(source, path, predicate, clauses, self._props())
        self._committed(path)
        return metrics


def merge(source: pa.Table, path: str, predicate: str, clauses: Callable[[TableMerger], TableMerger],
          props: CommitProperties | None = None) -> dict:
    """MERGE ``source`` (alias ``s``) into the table at ``path`` (alias ``t``), retrying a
    commit that conflicted with another writer on a fresh snapshot; returns its metrics."""
    for attempt in range(1, RETRIES + 1):
        try:
            dt = opened(path)
            merger = dt.merge(source, predicate, source_alias="s", target_alias="t",
                              commit_properties=props, post_commithook_properties=hooks(dt))
            return clauses(merger).execute()
        except CommitFailedError:
            if attempt == RETRIES:
                raise
            log.warning("merge into %s conflicted; retry %d/%d", path, attempt, RETRIES - 1)
