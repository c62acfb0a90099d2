"""A lease that serialises the writers of the derived gold tables across processes.

The gold stream and a backfill both rebuild rows of ``gold/session_funnel`` (and the tables
derived from it) from a silver snapshot. Delta's optimistic check starts at the write, so a
writer that read silver *before* the other committed could overwrite fresher rows with older
ones, and Delta would see no conflict. Holding this lease from the read to the commit makes
each rebuild see the other's result. It is an ``flock`` on ``<lake>/_locks/<name>.lock``:
exclusive between processes and threads, released by the kernel if a holder dies.

On an object store (``s3://``, ``abfss://``) there is no ``flock``; the lease is then a no-op
and ``docs/backfill.md`` says how to schedule backfills there.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def leased(lake: str) -> bool:
    """Whether ``lease`` serialises writers of ``lake`` (a local lake; not an object store)."""
    return not ("://" in lake and not lake.startswith("file:"))


@contextmanager
def lease(lake: str, name: str = "gold", who: str = "") -> Iterator[None]:
    if not leased(lake):
        yield
        return
    path = Path(lake.removeprefix("file:")) / "_locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        start = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s waits for the %s lease", who or "writer", name)
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("%s got the %s lease after %.1f s", who or "writer", name, time.monotonic() - start)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
