"""Spark writers: checkpoints, triggers, and the backfill's bulk rewrites and MERGEs, with
retries on conflicts. Transforms never write.

The streams' per-micro-batch commits (bronze, silver, the quarantine and every gold table) go
through delta-rs instead (``io/delta_rs.py``), each marked with its micro-batch
(``io/ledger.py``), so a replayed batch adds nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from delta.exceptions import ConcurrentAppendException, ConcurrentDeleteReadException
from delta.tables import DeltaTable
from pyspark.sql import DataFrame
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


def append(df: DataFrame, path: str) -> None:
    """A plain append (a backfill's rows; not a stream's)."""
    writer = df.write.format("delta").mode("append")
    with_retry(lambda: writer.save(path), what=f"append to {path}")


def replace_where(df: DataFrame, path: str, where: str) -> None:
    """Atomically replace the rows matching ``where`` with ``df`` (whose rows must match it)."""
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", where)
    with_retry(lambda: writer.save(path), what=f"replace {where} in {path}")


def insert_new(df: DataFrame, path: str, key: str) -> None:
    """Insert rows of ``df`` whose ``key`` is not yet in the table (an insert-only MERGE)."""
    target = DeltaTable.forPath(df.sparkSession, path)
    merge = target.alias("t").merge(df.alias("s"), f"t.{key} = s.{key}").whenNotMatchedInsertAll()
    with_retry(merge.execute, what=f"merge into {path}")


def stream_writer(df: DataFrame, name: str, checkpoint: str, available_now: bool,
                  interval: str) -> DataStreamWriter:
    """A named writer with its checkpoint and trigger: ``availableNow`` or a processing interval."""
    writer = df.writeStream.queryName(name).option("checkpointLocation", checkpoint)
    return writer.trigger(availableNow=True) if available_now else writer.trigger(
        processingTime=interval)
