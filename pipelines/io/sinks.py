"""Writers: they own checkpoints, triggers, MERGE and idempotency. Transforms never write."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from delta.exceptions import ConcurrentAppendException, ConcurrentDeleteReadException
from delta.tables import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (ConcurrentAppendException, ConcurrentDeleteReadException)


def with_retry(action: Callable[[], T], attempts: int = 5, what: str = "write") -> T:
    """Run a Delta write, retrying optimistic-concurrency conflicts with backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except RETRYABLE as err:
            if attempt == attempts:
                raise
            log.warning("%s conflicted (%s); retry %d/%d", what, type(err).__name__, attempt,
                        attempts - 1)
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def append_once(df: DataFrame, path: str, app_id: str, version: int) -> None:
    """Append ``df`` to the Delta table at ``path`` exactly once per (app_id, version).

    Delta skips a write whose ``txnAppId`` already committed this ``txnVersion``, so a
    replayed micro-batch adds nothing.
    """
    writer = (df.write.format("delta").mode("append")
              .option("txnAppId", app_id).option("txnVersion", version))
    with_retry(lambda: writer.save(path), what=f"append to {path}")


def insert_new(df: DataFrame, path: str, key: str, prune: dict[str, list] | None = None) -> None:
    """Insert rows of ``df`` whose ``key`` is not yet in the table (an insert-only MERGE).

    ``prune`` maps a partition column to the values present in ``df``; the match is
    restricted to them so the MERGE reads only those partitions. Replays insert nothing.
    """
    cond = f"t.{key} = s.{key}"
    for col, values in (prune or {}).items():
        literals = ", ".join(f"'{v}'" for v in values) or "NULL"
        cond += f" AND t.{col} IN ({literals})"
    target = DeltaTable.forPath(df.sparkSession, path)
    merge = target.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll()
    with_retry(merge.execute, what=f"merge into {path}")


def distinct_values(df: DataFrame, col: str) -> list:
    return sorted(r[0] for r in df.select(col).distinct().collect() if r[0] is not None)


def stream_writer(df: DataFrame, name: str, checkpoint: str, available_now: bool,
                  interval: str) -> DataStreamWriter:
    """A named writer with its checkpoint and trigger: ``availableNow`` or a processing interval."""
    writer = df.writeStream.queryName(name).option("checkpointLocation", checkpoint)
    return writer.trigger(availableNow=True) if available_now else writer.trigger(
        processingTime=interval)


def max_value(path: str, df: DataFrame, col: str):
    """The largest ``col`` in the Delta table at ``path`` (answered from file stats)."""
    return df.sparkSession.read.format("delta").load(path).agg(F.max(col)).first()[0]


def replace_rows(new: DataFrame, old: DataFrame, path: str, keys: list[str]) -> None:
    """Make the table's rows for a set of keys equal ``new``, in one MERGE.

    ``old`` holds the table's current rows for the affected keys (read *before* the call):
    rows of ``new`` are upserted, and rows of ``old`` whose key is not in ``new`` (a session
    that merged into another, a window that lost its last session) are deleted. Running it
    again with the same input changes nothing.
    """
    tombstones = old.select(*keys).join(new.select(*keys), keys, "left_anti").withColumn(
        "_delete", F.lit(True))
    source = new.withColumn("_delete", F.lit(False)).unionByName(tombstones, allowMissingColumns=True)
    on = " AND ".join(f"t.{k} <=> s.{k}" for k in keys)
    values = {c: F.col(f"s.{c}") for c in new.columns}
    merge = (DeltaTable.forPath(new.sparkSession, path).alias("t").merge(source.alias("s"), on)
             .whenMatchedDelete(condition="s._delete")
             .whenMatchedUpdate(condition="NOT s._delete", set=values)
             .whenNotMatchedInsert(condition="NOT s._delete", values=values))
    with_retry(merge.execute, what=f"merge into {path}")


def overwrite(df: DataFrame, path: str) -> None:
    """Replace the whole (small, derived) table atomically."""
    writer = df.write.format("delta").mode("overwrite")
    with_retry(lambda: writer.save(path), what=f"overwrite {path}")
