"""Which micro-batch a streaming query last committed to a table, read from the table itself.

Every streaming commit carries ``userMetadata = "funnelhouse:<app id>:<batch id>"``, where the
app id is the query's id (kept in its checkpoint, so stable across restarts). When a
micro-batch is replayed after a crash, each of its writes asks the ledger whether the table
already holds that batch, and skips the write if so. That is the guarantee of Delta's
``txnAppId``/``txnVersion``, without its cost here: Delta 4.4.0 rebuilds the table state to
read the transaction ids on every such commit, 1.3-1.8 s a micro-batch on this machine
(docs/performance.md).

Each commit also carries the batch as a Delta transaction id (``txn``: the app id and the
batch id), which delta-rs keeps in the table's state. So the first question about a (table,
app) is answered from the table the write loads anyway (``DeltaTable.transaction_version``);
only a table last written before the ids were (or never by that app) has its history read,
newest first, until it meets that app's newest commit. Later answers come from what this
process committed since. So nothing the ledger knows is lost by a restart: the table holds
it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from deltalake import DeltaTable

log = logging.getLogger(__name__)

PREFIX = "funnelhouse"


def marker(app_id: str, batch_id: int) -> str:
    """The ``userMetadata`` of a streaming commit."""
    return f"{PREFIX}:{app_id}:{batch_id}"


def rs_uri(path: str) -> str:
    """A lake path as delta-rs names it (``s3a://`` is Hadoop's spelling of ``s3://``)."""
    return "s3://" + path[len("s3a://"):] if path.startswith("s3a://") else path


class Ledger:
    """The last batch id each app committed to each table; -1 when none."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def last(self, path: str, app_id: str, load: Callable[[], DeltaTable] | None = None) -> int:
        """``load``: how to get the table at ``path`` as of its newest commit (a writer's kept
        object), called only when the ledger does not know the answer yet."""
        key = (path, app_id)
        if key not in self._last:
            self._last[key] = last_committed(path, app_id, load() if load is not None else None)
        return self._last[key]

    def has(self, path: str, app_id: str, batch_id: int,
            load: Callable[[], DeltaTable] | None = None) -> bool:
        return batch_id <= self.last(path, app_id, load)

    def record(self, path: str, app_id: str, batch_id: int) -> None:
        self._last[(path, app_id)] = max(batch_id, self._last.get((path, app_id), -1))


def last_committed(path: str, app_id: str, table: DeltaTable | None = None) -> int:
    """The newest batch id ``app_id`` committed to the table at ``path`` (-1 when none);
    ``table`` is that table, when loaded already."""
    table = table if table is not None else DeltaTable(rs_uri(path))
    version = table.transaction_version(app_id)
    if version is not None:
        return version
    prefix = f"{PREFIX}:{app_id}:"
    limit = 100
    while True:
        commits = table.history(limit)
        for commit in commits:
            meta = commit.get("userMetadata") or ""
            if meta.startswith(prefix):
                return int(meta[len(prefix):])
        if len(commits) < limit:
            return -1
        limit *= 10
