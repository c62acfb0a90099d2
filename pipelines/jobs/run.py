"""The streaming job (bronze, silver and gold, one query), until interrupted or until caught up.

Started by ``funnelhouse run`` (``spark-submit ... pipelines/cli.py run --input DIR --lake DIR``).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Settings
from pipelines.streams import CHECKPOINTS, QUERIES

log = logging.getLogger(__name__)


class StreamFailed(RuntimeError):
    pass


def _check(query: StreamingQuery) -> None:
    if query.exception() is not None:
        raise StreamFailed(f"query {query.name} failed: {query.exception()}")


def _cause(err: Exception) -> str:
    """The innermost message of a streaming failure (a Python error in foreachBatch included)."""
    text = str(err)
    for line in reversed(text.splitlines()):
        if line.startswith(("pipelines.", "ValueError", "RuntimeError")) or "Error: " in line:
            return line.strip()
    return text.splitlines()[0] if text else type(err).__name__


def clear_unborn_offsets(checkpoint: Path) -> list[Path]:
    """Remove what a kill while Spark wrote a query's first offset file left: ``offsets/``
    holding only a temporary file (``.0.<uuid>.tmp`` and its ``.crc``) and no offset. Spark
    then takes the query for a new one and refuses the folder as not empty
    (``STATE_STORE_CHECKPOINT_LOCATION_NOT_EMPTY``). A temporary file was never an offset,
    so nothing is lost; once a batch's offset exists, nothing is touched. Returns what went."""
    offsets = checkpoint / "offsets"
    if not offsets.is_dir() or any(f.name.isdigit() for f in offsets.iterdir()):
        return []
    leftovers = [f for f in offsets.iterdir() if f.name.startswith(".") and ".tmp" in f.name]
    for f in leftovers:
        f.unlink()
    return leftovers


# Checkpoints of the releases that ran a query per layer. Their lake's new query would start
# from the source's first file and append everything again (bronze, and silver: its dedupe
# state is not theirs), so such a lake is refused until it is rebuilt.
PER_LAYER_CHECKPOINTS = ("bronze/events", "silver/events", "gold")


def refuse_per_layer_checkpoints(s: Settings) -> None:
    """Raise when the lake holds per-layer checkpoints and not this release's."""
    if "://" in s.lake or any(Path(s.checkpoint(c)).exists() for c in CHECKPOINTS.values()):
        return
    old = [f"_checkpoints/{c}" for c in PER_LAYER_CHECKPOINTS if Path(s.checkpoint(c)).exists()]
    if old:
        raise RuntimeError(
            f"{s.lake} was written by a release with a query per layer ({', '.join(old)}); "
            "this one streams every table from one query (_checkpoints/pipeline) and would append "
            "the whole source again. Rebuild: stop the job, move those checkpoints and the bronze, "
            "silver and gold tables aside, and run `funnelhouse run` (docs/operations.md)")


def _start(name: str, spark: SparkSession, s: Settings, available_now: bool) -> StreamingQuery:
    """Start query ``name``; a failure to start (an unreadable checkpoint, a source that is not
    there) becomes one line naming the query and its checkpoint."""
    refuse_per_layer_checkpoints(s)
    checkpoint = s.checkpoint(CHECKPOINTS[name])
    if "://" not in checkpoint and clear_unborn_offsets(Path(checkpoint)):
        log.warning("%s: removed a half-written first offset file (the job was killed while "
                    "writing it)", name)
    try:
        return QUERIES[name](spark, s, available_now)
    except (RuntimeError, ValueError, OSError):  # ours, already one clear line (state layout, ...)
        raise
    except Exception as err:  # noqa: BLE001 - Py4J and Spark errors: one line, the cause kept
        match = re.search(r"(?:^|[:\s])([\w.]*(?:Exception|Error)): (.+)", str(err), re.M)
        cause = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}" if match else _cause(err)
        raise StreamFailed(f"query {name} could not start (checkpoint {s.checkpoint(CHECKPOINTS[name])}): "
                           f"{cause.strip()}") from err


def run_available_now(spark: SparkSession, s: Settings, names: Iterable[str] = QUERIES
                      ) -> dict[str, StreamingQuery]:
    """Process everything pending, then return the queries (ended; their progress kept)."""
    queries = {name: _start(name, spark, s, True) for name in names}
    for name, query in queries.items():
        try:
            query.awaitTermination()
        except StreamingQueryException as err:  # one clear line: the query and the cause
            for other in queries.values():
                other.stop()
            raise StreamFailed(f"query {name} failed: {_cause(err)}") from err
        _check(query)
        log.info("%s caught up", name)
    return queries


def run_continuously(spark: SparkSession, s: Settings, names: Iterable[str] = QUERIES,
                     stop: threading.Event | None = None) -> None:
    """Run the query on its trigger until SIGINT/SIGTERM (or ``stop`` is set), then stop it
    between micro-batches."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    spark.streams.resetTerminated()  # forget queries that ended before this run
    queries = [_start(name, spark, s, False) for name in names]
    try:
        while not stop.is_set():
            if spark.streams.awaitAnyTermination(timeout=1):
                for q in queries:
                    _check(q)
                break
    finally:
        for q in queries:
            stop_between_batches(q)
    log.info("stopped cleanly")


def stop_between_batches(query: StreamingQuery, timeout: float = 300) -> None:
    """Let the running micro-batch finish, then stop (a plain ``stop()`` interrupts it; it
    would be replayed on restart, but a clean stop leaves nothing half-done)."""
    deadline = time.monotonic() + timeout
    while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
        time.sleep(0.2)
    query.stop()
