"""``ops/notifications``: every notice is recorded here before it is sent, then updated with
the outcome of each attempt. Reads and writes go through delta-rs (no Spark), so delivery runs
in the gold micro-batch, in ``funnelhouse notify``, or anywhere a Python process runs.

Guarantees (docs/alerts.md):
- a notice is recorded once: only ids the outbox lacks are inserted, and the id comes from
  the source row, so replays, restarts and backfills add nothing. Every writer that records
  (a gold micro-batch, ``funnelhouse notify``) holds the gold lease (``io/lease.py``), so on
  a local lake the ids read under it are the outbox's and the new rows are appended; on an
  object store, where the lease is a no-op, a MERGE on the id inserts them;
- only ``pending`` notices are sent, and a notice's status becomes ``sent`` in the commit right
  after its channel accepted it. A crash between those two steps sends that notice again on
  the next delivery (at least once at the edge): emails carry the id as ``Message-ID``,
  webhooks as ``Idempotency-Key``, so a receiver can drop the repeat;
- a channel that fails is retried with exponential backoff; after ``notify.max_attempts``
  the notice is ``failed`` (kept, with the error) until ``funnelhouse notify retry``;
- offers and reminders over ``notify.limits`` (per recipient per day) are recorded as
  ``suppressed`` with the reason; drop-off alerts and fraud flags never are.

What a record reads does not grow with the day's notices (at 10k events/s the stream
records thousands a second). The limits' counts per (kind, recipient, day) are kept by the
``Outbox`` with the table version they hold for (``Tally``): read from the days' partitions
once, then moved on by its own inserts; a commit it did not make (another writer) makes it
read them again. A micro-batch whose gold rows were all new to their tables (``fresh``)
reads no ids: notices are recorded only from rows gold holds, so a row a batch has just
inserted has none yet. Any other call (a replay, ``funnelhouse notify``) reads the days' ids.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from pipelines import tables as T
from pipelines.config import NotifySettings
from pipelines.io.delta_rs import arrow_schema, hooks, merge, opened, read
from pipelines.io.lease import leased
from pipelines.io.ledger import rs_uri
from pipelines.notify.channels import Sender, SendError
from pipelines.notify.messages import NOTICE_COLUMNS, ON_CALL, Notice, notice_frame, to_json

log = logging.getLogger(__name__)
COUNTED = ("pending", "sent", "failed")  # what a limit counts: everything not suppressed
KEPT_DAYS = 3  # the days whose limit counts an outbox keeps (the stream's notices are of today)


@dataclass(frozen=True)
class Delivery:
    """What one delivery run did, per (channel, status)."""
    outcomes: Counter

    def __str__(self) -> str:
        return ", ".join(f"{c} {s}: {n}" for (c, s), n in sorted(self.outcomes.items())) or "nothing to send"


@dataclass
class Tally:
    """The notices a limit counts (``COUNTED``) per (kind, recipient, day), for the ``days``
    read, as of table ``version``."""
    version: int | None = None
    days: set = field(default_factory=set)
    used: dict[tuple[str, str, date], int] = field(default_factory=dict)

    def add(self, counts: pa.Table) -> None:
        """Counts of ``kind``, ``recipient``, ``day`` and ``n`` added."""
        columns = (counts[c].to_pylist() for c in ("kind", "recipient", "day", "n"))
        for k, r, d, n in zip(*columns, strict=True):
            self.used[(k, r, d)] = self.used.get((k, r, d), 0) + n

    def keep(self, wanted: list, most: int) -> None:
        """The ``wanted`` days, and of the others the newest, up to ``most`` days in all."""
        others = sorted(self.days - set(wanted))
        drop = set(others[:max(len(self.days) - most, 0)])
        if drop:
            self.days -= drop
            self.used = {key: n for key, n in self.used.items() if key[2] in self.days}


def counted(rows: pa.Table, day: str = "created_date") -> pa.Table:
    """Outbox rows -> how many a limit counts per kind, recipient and day (``n``)."""
    rows = rows.filter(pc.is_in(rows["status"], value_set=pa.array(COUNTED)))
    return (rows.group_by(["kind", "recipient", day]).aggregate([([], "count_all")])
            .rename_columns(["kind", "recipient", "day", "n"]))


class Outbox:
    def __init__(self, lake: str, s: NotifySettings):
        self.path = rs_uri(f"{lake}/{T.NOTIFICATIONS.name}")
        self.s = s
        self.schema = arrow_schema(T.NOTIFICATIONS)
        # ``record`` runs under the gold lease, which serialises recorders here: it may append.
        # (A MERGE reads the days' partitions whole: a cost that grows with the outbox.)
        self.append = leased(lake)
        self.tally = Tally()

    def read(self, filters: list[tuple] | None = None, columns: list[str] | None = None) -> pa.Table:
        return read(self.path, filters, columns)

    def record(self, new: list[Notice], now: datetime | None = None) -> int:
        """``record_frame`` of ``Notice`` objects; returns how many rows it inserted."""
        return self.record_frame(pd.DataFrame(
            [(n.notification_id, n.kind, n.channel, n.source_id, n.recipient, n.subject, to_json(n.payload),
              n.day) for n in new], columns=NOTICE_COLUMNS), now).num_rows

    def record_frame(self, new: pd.DataFrame, now: datetime | None = None, fresh: bool = False) -> pa.Table:
        """Record the notices (``NOTICE_COLUMNS``) the outbox lacks: ``pending``, or
        ``suppressed`` by a limit (taken in the order of day and id, counting what the outbox
        already holds for the recipient that day). Returns the rows it inserted. ``fresh``:
        the caller knows the outbox holds none of these ids (their gold rows are new), so
        none are read. The caller holds the gold lease."""
        if not len(new):
            return self.schema.empty_table()
        now = now or datetime.now(UTC).replace(tzinfo=None)
        days = sorted(set(new["day"]))
        if not fresh:  # only the id column of the days' partitions
            have = self.read([("created_date", "in", days)], ["notification_id"])["notification_id"]
            have = have.filter(pc.is_in(have, value_set=pa.array(new["notification_id"], pa.string())))
            new = new[~new["notification_id"].isin(have.to_pylist())]
        new = (new.drop_duplicates("notification_id")
               .sort_values(["day", "notification_id"], ignore_index=True))
        if not len(new):
            return self.schema.empty_table()
        key = ["kind", "recipient", "day"]
        tally = self._tally(days)
        used = np.array([tally.used.get(k, 0)
                         for k in zip(new["kind"], new["recipient"], new["day"], strict=True)])
        # Within a (kind, recipient, day), the k-th new notice is the (used + k + 1)-th: pending
        # while that is within the limit, suppressed after (the loop this replaces counted so).
        rank = used + new.groupby(key).cumcount().to_numpy()
        limit = new["kind"].map(lambda k: None if k in ON_CALL else self.s.limits.get(k)).astype(float)
        over = (limit.notna() & (rank >= limit)).to_numpy()
        reason = [f"limit: at most {int(n)} {k} per recipient per day" if o else None
                  for o, n, k in zip(over, limit, new["kind"], strict=True)]
        table = pa.table({
            "notification_id": new["notification_id"], "kind": new["kind"], "channel": new["channel"],
            "source_id": new["source_id"], "recipient": new["recipient"], "subject": new["subject"],
            "payload": new["payload"], "status": pa.array(["suppressed" if o else "pending" for o in over]),
            "attempts": pa.repeat(0, len(new)), "last_error": pa.array(reason, pa.string()),
            "created_at": pa.repeat(pa.scalar(now, pa.timestamp("us")), len(new)),
            "sent_at": pa.nulls(len(new)), "created_date": pa.array(new["day"], pa.date32())})
        table = table.select(self.schema.names).cast(self.schema)
        if self.append:
            dt = opened(self.path)
            write_deltalake(dt, table, mode="append", partition_by=["created_date"],
                            post_commithook_properties=hooks(dt))
        else:
            self._merge(table, lambda m: m.when_not_matched_insert_all())
        self._moved(tally.version, counted(table))
        return table

    def _tally(self, days: list) -> Tally:
        """The limits' counts for ``days``: as kept, unless another writer committed since
        (then read again), and with any day not kept yet read from its partition."""
        version = opened(self.path).version()
        if self.tally.version != version:
            self.tally = Tally(version)
        missing = sorted(set(days) - self.tally.days)
        if missing:
            self.tally.add(counted(self.read([("created_date", "in", missing)],
                                             ["kind", "recipient", "status", "created_date"])))
            self.tally.days |= set(missing)
            self.tally.keep(days, KEPT_DAYS)
        return self.tally

    def _moved(self, before: int | None, counts: pa.Table | None = None) -> None:
        """After a commit of this outbox's own that started from version ``before``: the
        tally moves on with it (adding ``counts``), unless another commit came between."""
        after = opened(self.path).version()
        if self.tally.version is not None and self.tally.version == before and after == before + 1:
            if counts is not None:
                self.tally.add(counts)
            self.tally.version = after
        else:
            self.tally = Tally()

    def due(self, statuses: Iterable[str] = ("pending",), ids: set[str] | None = None,
            days: Iterable | None = None) -> list[dict]:
        """The notices to send: in ``statuses``, among ``ids`` (all when None), in ``days``."""
        # Only the partition column is pushed down: delta-rs cannot filter a string column
        # against its (string_view) statistics here.
        data = self.read(None if days is None else [("created_date", "in", sorted(set(days)))])
        data = data.filter(pc.is_in(data.column("status"), pa.array(list(statuses))))
        return [r for r in data.to_pylist() if ids is None or r["notification_id"] in ids]

    def deliver(self, rows: list[dict], channels: Mapping[str, Sender]) -> Delivery:
        """Send ``rows`` (outbox rows) through the channels that are on, each with up to
        ``max_attempts`` tries, and record each outcome. Rows of a channel that is off stay
        ``pending``."""
        outcomes: Counter = Counter()
        updates = []
        by_channel: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_channel[r["channel"]].append(r)
        for channel, todo in by_channel.items():
            sender = channels.get(channel)
            if sender is None:
                outcomes[(channel, "pending (channel off)")] += len(todo)
                continue
            try:
                for r in todo:
                    updates.append(self._send(sender, r))
                    outcomes[(channel, updates[-1]["status"])] += 1
            finally:
                sender.close()
                self._update(updates)  # what was sent is recorded even if a later send raised
                updates = []
        return Delivery(outcomes)

    def _send(self, sender: Sender, row: dict) -> dict:
        notice = Notice(row["notification_id"], row["kind"], row["channel"], row["source_id"],
                        row["recipient"], row["subject"], json.loads(row["payload"]), row["created_date"])
        error = None
        for attempt in range(1, self.s.max_attempts + 1):
            try:
                sender.send(notice)
                return {**row, "status": "sent", "attempts": row["attempts"] + attempt, "last_error": None,
                        "sent_at": datetime.now(UTC).replace(tzinfo=None)}
            except SendError as err:
                error = str(err)
                log.warning("%s %s attempt %d/%d failed: %s", row["kind"], row["notification_id"][:12],
                            attempt, self.s.max_attempts, error)
                if attempt < self.s.max_attempts:
                    time.sleep(self.s.backoff.total_seconds() * 2 ** (attempt - 1))
            except (KeyError, ValueError, IndexError) as err:  # a template that does not fit: no retry
                log.error("%s %s cannot be rendered: %r", row["kind"], row["notification_id"][:12], err)
                return {**row, "status": "failed", "attempts": row["attempts"] + attempt,
                        "last_error": f"template: {type(err).__name__}: {err}"}
        return {**row, "status": "failed", "attempts": row["attempts"] + self.s.max_attempts,
                "last_error": error}

    def _update(self, rows: list[dict]) -> None:
        """The outcomes of sending ``rows`` (outbox rows): a MERGE on their ids, reading only
        the files written since the earliest of them was recorded. Statuses change between
        counted ones only, so the limits' tally moves on unchanged."""
        if not rows:
            return
        source = pa.Table.from_pylist(rows, schema=self.schema)
        before = self.tally.version
        self._merge(source, lambda m: m.when_matched_update(
            {c: f"s.{c}" for c in ("status", "attempts", "last_error", "sent_at")}),
                    since=pc.min(source["created_at"]).as_py())
        self._moved(before)

    def _merge(self, source: pa.Table, clauses, since: datetime | None = None) -> None:
        """A MERGE on the id, pruned to the source's days (the partition column), and to the
        rows recorded ``since`` (files whose statistics end before it are not read)."""
        days = ", ".join(f"'{d}'" for d in sorted(set(source.column("created_date").to_pylist())))
        bound = f" AND t.created_at >= '{since.isoformat()}'" if since is not None else ""
        merge(source, self.path,
              f"t.notification_id = s.notification_id AND t.created_date IN ({days}){bound}", clauses)


def open_outbox(lake: str, s: NotifySettings, spark=None) -> Outbox:
    """The lake's outbox, created when missing (a local lake needs no Spark for that; an
    object store does)."""
    T.ensure(spark, lake, T.NOTIFICATIONS)
    return Outbox(lake, s)


def record_rows(box: Outbox, kind: str, rows: pa.Table, fresh: bool = False) -> pa.Table:
    """Record the notices of gold ``rows`` of ``kind`` (their table's columns); returns the
    outbox rows inserted. ``fresh``: the rows are new to their gold table (``record_frame``)."""
    return box.record_frame(notice_frame(kind, rows, box.s), fresh=fresh)
