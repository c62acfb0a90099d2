"""A held table in two tiers: the rows a micro-batch may touch as Arrow (``hot``), the rest
compressed (``cold``).

The open sessions' events are most of gold's state: at 10,000 events/s with a 30-minute gap
and a 10-minute watermark delay the driver holds 24M events, 137 bytes each as Arrow. Yet a
micro-batch touches only the journeys that are active now, and the watermark closes only the
sessions whose ``closes`` it has reached; the events in between wait half an hour untouched.
``Tiered`` keeps those as ``Cold`` record batches: zstd-compressed Arrow IPC beside their key
column as plain Arrow (about 48 bytes an event in all), so that a lookup still finds a key's
rows by binary search without decompressing anything. A cold batch that holds a looked-up
key, or whose earliest timer the watermark is about to reach, is thawed back into the hot
tier whole (``settled``). After a start, the table read back is tiered at once (``started``).

Which rows are cold is a matter of memory alone: every operation gives the same rows whatever
the tiers hold, and the stored form (the state file) is the plain table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.common import sorted_distinct
from pipelines.stateful.gold import (
    Replayed,
    bounded,
    combined,
    keep_rows,
    key_hits,
    key_rows,
    rows_of,
    sorted_batch,
)

COLD_ROWS = 262_144  # rows a cold batch holds at most (a thaw decompresses ~20 ms of them)
RECENT_ROWS = 500_000  # the newest hot rows, never frozen: the journeys active now
FREEZE_ROWS = 2_000_000  # rows ``settled`` freezes in one call at most (``started`` tiers a whole table)
PACK = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))


@dataclass(frozen=True)
class Cold:
    """One record batch of a held table, compressed (``packed``: Arrow IPC, zstd, every column
    but the key), beside its ``key`` column (sorted) and the least value of its timer column."""
    keys: pa.RecordBatch  # the key column alone
    packed: pa.Buffer
    low: int

    @classmethod
    def freeze(cls, batch: pa.RecordBatch, key: str, timer: str) -> Cold:
        rest = batch.drop_columns([key])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rest.schema, options=PACK) as writer:
            writer.write_batch(rest)
        return cls(batch.select([key]), sink.getvalue(), pc.min(batch.column(timer)).as_py())

    @property
    def num_rows(self) -> int:
        return self.keys.num_rows

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.packed.size

    def holds(self, keys: np.ndarray) -> bool:
        """Whether any of ``keys`` (sorted, unique) has rows here: a binary search, nothing
        decompressed."""
        return bool(key_hits(self.keys.column(0).to_numpy(), keys)[1].any())

    def thaw(self, schema: pa.Schema) -> pa.RecordBatch:
        rest = pa.ipc.open_stream(self.packed).read_next_batch()
        key = self.keys.schema.names[0]
        return pa.RecordBatch.from_arrays(
            [self.keys.column(0) if name == key else rest.column(name) for name in schema.names],
            schema=schema)


@dataclass(frozen=True)
class Tiered:
    """A held table (each record batch sorted by ``key``, as ``stateful/gold.by_key``) whose
    rows are ``hot`` (Arrow) or ``cold`` (``Cold``). Never changed in place."""
    hot: pa.Table
    key: str
    timer: str  # the column whose least value is the table's event-time timer
    cold: tuple[Cold, ...] = ()

    @classmethod
    def started(cls, table: pa.Table | Replayed, key: str, timer: str, freeze_above: int, band: int
                ) -> Tiered:
        """A table read back after a start (a ``Replayed`` one is read from its file a record
        batch at a time), each record batch sorted by ``key`` and tiered at once:
        the rows whose timer is past ``freeze_above`` frozen, the others hot. A record batch
        at a time, its rows are ordered by their timer's ``band`` (ms) and then by key, and
        each band's rows become one cold batch: a cold batch then thaws within a band of its
        rows' timers, not all at once as the watermark nears the earliest (a cold batch in
        key order would hold every timer of the open state). The table is never copied
        whole: after a start at a steady rate it is gigabytes."""
        hot, cold = [], []
        for batch in table.to_batches():
            batch = sorted_batch(batch, key)
            times = batch.column(timer).to_numpy()
            later = times > freeze_above
            if not later.all():
                hot.append(batch.filter(pa.array(~later)))
            if not later.any():
                continue
            rows = np.flatnonzero(later)
            bands = (times[rows] - freeze_above - 1) // max(band, 1)
            order = np.argsort(bands, kind="stable")  # stable: in key order within a band
            rows, bands = rows[order], bands[order]
            ordered = batch.take(pa.array(rows))
            edges = np.flatnonzero(np.diff(bands)) + 1
            for lo, hi in zip([0, *edges], [*edges, len(rows)], strict=True):
                for start in range(lo, hi, COLD_ROWS):
                    cold.append(Cold.freeze(ordered.slice(start, min(COLD_ROWS, hi - start)), key, timer))
        return cls(bounded(hot, table.schema, key), key, timer, tuple(cold))

    @property
    def schema(self) -> pa.Schema:
        return self.hot.schema

    @property
    def num_rows(self) -> int:
        return self.hot.num_rows + sum(c.num_rows for c in self.cold)

    @property
    def nbytes(self) -> int:
        return self.hot.nbytes + sum(c.nbytes for c in self.cold)

    def to_batches(self) -> Iterator[pa.RecordBatch]:
        """Every row, a record batch at a time (a cold one decompressed only while it is used)."""
        yield from self.hot.to_batches()
        for c in self.cold:
            yield c.thaw(self.schema)

    def table(self) -> pa.Table:
        return pa.Table.from_batches(list(self.to_batches()), self.schema)

    def low(self) -> int | None:
        """The least value of the timer column (None: no rows)."""
        lows = [c.low for c in self.cold]
        if self.hot.num_rows:
            lows.append(pc.min(self.hot[self.timer]).as_py())
        return min(lows) if lows else None

    def with_hot(self, table: pa.Table) -> Tiered:
        """These tiers with ``table``'s rows (record batches sorted by key) added to the hot tier."""
        hot = [self.hot] if self.hot.num_rows else []
        return Tiered(pa.concat_tables([*hot, table.cast(self.hot.schema)]), self.key, self.timer, self.cold)

    def key_rows(self, keys: pa.Array | np.ndarray) -> tuple[pa.Table, Tiered]:
        """``(the rows whose key is in keys, the other rows)``: ``stateful/gold.key_rows`` on
        both tiers. A cold batch holding one of the keys is thawed; its other rows turn hot."""
        keys = sorted_distinct(np.asarray(keys, np.int64))
        found, hot = key_rows(self.hot, self.key, keys)
        parts, cold, thawed = [found], [], []
        for c in self.cold:
            if not c.holds(keys):
                cold.append(c)
                continue
            rows, rest = key_rows(pa.Table.from_batches([c.thaw(self.schema)]), self.key, keys)
            parts.append(rows)
            thawed += rest.to_batches()
        table = pa.concat_tables(parts)
        return table, Tiered(bounded([*thawed, *hot.to_batches()], self.schema, self.key),
                             self.key, self.timer, tuple(cold))

    def rows_of(self, keys: pa.Array | np.ndarray) -> pa.Table:
        """The rows whose key is in ``keys`` alone (the tiers stay as they are)."""
        keys = sorted_distinct(np.asarray(keys, np.int64))
        parts = [rows_of(self.hot, self.key, keys)]
        for c in self.cold:
            if c.holds(keys):
                parts.append(rows_of(pa.Table.from_batches([c.thaw(self.schema)]), self.key, keys))
        return pa.concat_tables(parts)

    def due(self, upto: int) -> tuple[pa.Table, Tiered]:
        """``(the rows whose timer is at most upto, the other rows)``. Cold batches with such
        rows are thawed first (``settled`` thaws them before the watermark gets there)."""
        tiers = self._thawed(upto)
        done = pc.less_equal(tiers.hot[self.timer], upto)
        if not pc.any(done).as_py():
            return self.hot.schema.empty_table(), tiers
        return (tiers.hot.filter(done),
                Tiered(keep_rows(tiers.hot, pc.invert(done), self.key), self.key, self.timer, tiers.cold))

    def settled(self, thaw_upto: int, freeze_above: int) -> Tiered:
        """These rows, tiered again: cold batches whose timer reaches ``thaw_upto`` thawed; hot
        record batches older than the newest ``RECENT_ROWS`` whose timer is all past
        ``freeze_above`` frozen (about ``FREEZE_ROWS`` at most, in cold batches of about
        ``COLD_ROWS``)."""
        recent, most, size = RECENT_ROWS, FREEZE_ROWS, COLD_ROWS
        tiers = self._thawed(thaw_upto)
        batches = tiers.hot.to_batches()
        young, newest = len(batches), 0
        while young and newest < recent:
            young -= 1
            newest += batches[young].num_rows
        if newest < recent:
            return tiers
        stay, chosen, rows = [], [], 0
        for batch in batches[:young]:
            if (batch.num_rows and (not chosen or rows + batch.num_rows <= most)
                    and pc.min(batch.column(self.timer)).as_py() > freeze_above):
                chosen.append(batch)
                rows += batch.num_rows
            else:
                stay.append(batch)
        if rows < min(size, most):  # too few to be worth a cold batch yet
            return tiers
        frozen, group = [], []
        for batch in chosen:  # whole batches only: a slice left hot would keep its parent's buffers
            for piece in range(0, batch.num_rows, size):
                group.append(batch.slice(piece, size))
                if sum(b.num_rows for b in group) >= size:
                    frozen.append(Cold.freeze(combined(group, self.key), self.key, self.timer))
                    group = []
        if group:
            frozen.append(Cold.freeze(combined(group, self.key), self.key, self.timer))
        hot = pa.Table.from_batches([*stay, *batches[young:]], self.schema)
        return Tiered(hot, self.key, self.timer, (*tiers.cold, *frozen))

    def _thawed(self, upto: int) -> Tiered:
        """These tiers with every cold batch whose timer reaches ``upto`` thawed into hot."""
        due = [c for c in self.cold if c.low <= upto]
        if not due:
            return self
        thawed = [c.thaw(self.schema) for c in due]
        hot = bounded([*thawed, *self.hot.to_batches()], self.schema, self.key)
        return Tiered(hot, self.key, self.timer, tuple(c for c in self.cold if c.low > upto))
