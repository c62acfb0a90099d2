"""Gold's state: its three processors (sessions, fraud, offers), run by the driver.

Each processor is a ``GroupState``-style function (``process(key, frames, state)``) written
once and used in two places: the batch build calls the same pure functions underneath, and the
stream calls the processor on each micro-batch's on-time events. In the stream the driver holds
every processor's state as one group, between micro-batches as ``Held`` values (tables kept as
``Kept``, never changed in place), and in the stream's checkpoint as the files of
``stateful/state_files.py``.

Why the driver and not ``applyInPandasWithState``: a gold micro-batch's work is small (the
journeys it touches, the open bursts, the pending clicks), and the Python-worker round trip of
Spark's operator, its state store and its extra no-data batch for timers cost far more than the
work (docs/performance.md). The timer semantics are Spark's: a processor gets the batch's
events with the watermark the batch started with, then, if its timer has passed the watermark
the batch moved to, a timed-out call with no events, as Spark's following no-data batch would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import StructType

from pipelines.common import Transform, sorted_distinct

Process = Callable[[tuple, Iterator[pd.DataFrame], "KeyState"], Iterator[pd.DataFrame]]


@dataclass(frozen=True)
class Processor:
    name: str
    input: Transform  # on-time silver events -> its rows (``EVENT_COLUMNS`` and friends): batch
    rows: Callable[[pa.Table], pa.Table]  # the same, on the stream's collected micro-batch
    process: Process  # what it does with its rows and its state
    state: StructType  # its state fields (binary or string)
    output: StructType  # what it emits, ``kind`` included
    reads: tuple[str, ...]  # the silver columns ``rows`` reads
    arrow: bool = False  # ``process`` takes its rows as Arrow tables (else as pandas frames)


@dataclass(frozen=True)
class Held:
    """One processor's state between micro-batches: its field values and its timer."""
    values: tuple | None = None
    timeout_ms: int | None = None


class KeyState:
    """The ``GroupState`` API over one ``Held`` value, at one watermark."""

    def __init__(self, held: Held, watermark_ms: int, timed_out: bool = False):
        self._values, self._timeout = held.values, held.timeout_ms
        self._watermark, self._timed_out = watermark_ms, timed_out

    @property
    def exists(self) -> bool:
        return self._values is not None

    @property
    def get(self) -> tuple:
        if self._values is None:
            raise ValueError("no state")
        return self._values

    @property
    def hasTimedOut(self) -> bool:  # noqa: N802 - GroupState's name
        return self._timed_out

    def update(self, values: tuple) -> None:
        self._values = tuple(values)

    def remove(self) -> None:
        self._values, self._timeout = None, None

    def setTimeoutTimestamp(self, ms: int) -> None:  # noqa: N802
        self._timeout = int(ms)

    def getCurrentWatermarkMs(self) -> int:  # noqa: N802
        return self._watermark

    def held(self) -> Held:
        return Held(self._values, self._timeout if self._values is not None else None)


def advance(p: Processor, rows: pd.DataFrame | pa.Table | None, held: Held, before_ms: int, after_ms: int
            ) -> tuple[list[pd.DataFrame], Held]:
    """One micro-batch of processor ``p``: its ``rows`` at the watermark ``before_ms``, then
    its timer at ``after_ms`` (0 = no watermark yet). Returns its output frames and its state."""
    out: list[pd.DataFrame] = []
    if held.values is not None:  # what changes is counted from this batch's start
        held = Held(tuple(v.begun() if isinstance(v, Kept) else v for v in held.values), held.timeout_ms)
    if rows is not None and len(rows):
        state = KeyState(held, before_ms)
        out += list(p.process((0,), iter([rows]), state))
        held = state.held()
    if held.values is not None and held.timeout_ms is not None and held.timeout_ms < after_ms:
        state = KeyState(held, after_ms, timed_out=True)
        out += list(p.process((0,), iter([]), state))
        held = state.held()
    if held.values is not None:  # a table read back after a start that no call took up: whole
        held = Held(tuple(replace(v, value=v.value.table()) if isinstance(v, Kept)
                          and isinstance(v.value, Replayed) else v for v in held.values), held.timeout_ms)
    return [f for f in out if len(f)], held


@dataclass(frozen=True)
class Kept:
    """A state field as a processor keeps it between micro-batches of one run (a table, a
    frame), with ``encode``, the field's stored form: what the state file holds, and what the
    processor decodes after a start. Never changed in place.

    A table may name its ``key`` column and the keys whose rows ``changed`` since the batch
    began (None: none yet): then the state file may store just those keys' rows
    (``delta_bytes``). The processor must name every key whose rows it added, changed or
    removed; naming more only stores more. ``by_key``: each of the table's record batches is
    sorted by ``key`` (``key_rows`` finds a key's rows by binary search)."""
    value: Any
    encode: Callable[[Any], str | bytes]
    key: str | None = None
    changed: pa.Array | None = None
    by_key: bool = False

    def begun(self) -> Kept:
        """This value at the start of a batch: nothing changed yet."""
        return replace(self, changed=None) if self.changed is not None else self

    def changing(self, value: Any, keys: pa.Array) -> Kept:
        """``value``, derived from this one by changing the rows of ``keys``."""
        if self.changed is not None:
            keys = pa.concat_arrays([self.changed, keys.cast(self.changed.type)])
        return replace(self, value=value, changed=pc.unique(keys))


CHUNKS = 64  # a held table's record batches before ``keep_rows`` makes them one


def keep_rows(table: pa.Table, mask: pa.ChunkedArray | pa.Array, key: str | None = None) -> pa.Table:
    """``table.filter(mask)`` for the state's held tables, without copying what it keeps whole.
    A micro-batch appends its rows as a new record batch and drops the rows of the keys it
    touched or closed; most batches of a long-held table lose no row, and a filter would copy
    them all (an O(open state) copy every micro-batch). Past ``CHUNKS`` batches, the small
    ones are combined (``_merged``), each sorted by ``key`` when one is named."""
    batches, offset = [], 0
    for batch in table.to_batches():
        keep = mask.slice(offset, batch.num_rows)
        offset += batch.num_rows
        kept = pc.sum(keep).as_py() or 0
        if kept == batch.num_rows:
            batches.append(batch)
        elif kept:
            batches.append(batch.filter(keep))
    return bounded(batches, table.schema, key)


def key_rows(table: pa.Table, key: str, keys: pa.Array | np.ndarray) -> tuple[pa.Table, pa.Table]:
    """``(the rows whose key is in keys, the other rows)`` of ``table``, whose every record
    batch is sorted by ``key`` (``by_key``). A binary search per wanted key in each record
    batch finds its rows: a micro-batch's lookups into gigabytes of open state cost its own
    keys, not a hash of every held row. A batch holding none of them is kept as it is; past
    ``CHUNKS`` batches, the other rows' small ones are combined (``keep_rows``)."""
    found, rest = [], []
    for batch, mask, hits in key_masks(table, key, keys):
        if mask is None:
            rest.append(batch)
            continue
        found.append(batch.filter(mask))
        if hits < batch.num_rows:
            rest.append(batch.filter(pc.invert(mask)))
    return pa.Table.from_batches(found, table.schema), bounded(rest, table.schema, key)


def rows_of(table: pa.Table, key: str, keys: pa.Array | np.ndarray) -> pa.Table:
    """The rows whose key is in ``keys`` alone (``key_rows``' first part, the others not copied)."""
    return pa.Table.from_batches([batch.filter(mask) for batch, mask, _ in key_masks(table, key, keys)
                                  if mask is not None], table.schema)


def key_masks(table: pa.Table, key: str, keys: pa.Array | np.ndarray
               ) -> Iterator[tuple[pa.RecordBatch, pa.Array | None, int]]:
    """Per record batch (sorted by ``key``): the batch, a mask of its rows whose key is in
    ``keys`` (None: no such row), and how many rows that is."""
    wanted = sorted_distinct(np.asarray(keys, np.int64))
    for batch in table.to_batches():
        held = batch.column(key).to_numpy()
        lo, hit = key_hits(held, wanted)
        if not hit.any():
            yield batch, None, 0
            continue
        lo = lo[hit]
        hi = np.searchsorted(held, wanted[hit], "right")
        edges = np.zeros(len(held) + 1, np.int64)  # +1 where a key's rows begin, -1 after them
        edges[lo] += 1
        edges[hi] -= 1
        yield batch, pa.array(np.cumsum(edges[:-1]) > 0), int((hi - lo).sum())


def key_hits(held: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``wanted`` (sorted, unique): where it would go in ``held`` (sorted), and
    whether it is there."""
    lo = np.searchsorted(held, wanted)
    return lo, held[np.minimum(lo, len(held) - 1)] == wanted if len(held) else lo < 0


def by_key(table: pa.Table, key: str) -> pa.Table:
    """``table`` with every record batch sorted by ``key``; a sorted one is kept as it is."""
    return pa.Table.from_batches([sorted_batch(b, key) for b in table.to_batches()], table.schema)


def sorted_batch(batch: pa.RecordBatch, key: str) -> pa.RecordBatch:
    held = batch.column(key).to_numpy()
    return batch if (held[1:] >= held[:-1]).all() else batch.take(pa.array(np.argsort(held, kind="stable")))


def bounded(batches: list[pa.RecordBatch], schema: pa.Schema, key: str | None) -> pa.Table:
    return pa.Table.from_batches(_merged(batches, key) if len(batches) > CHUNKS else batches, schema=schema)


def _merged(batches: list[pa.RecordBatch], key: str | None = None) -> list[pa.RecordBatch]:
    """Neighbouring record batches combined into at most ``CHUNKS / 2 + 1`` of similar size;
    a batch that is already that large stays as it is. Combining all into one would copy the
    whole open state every ``CHUNKS`` batches, and then every later micro-batch whose touched
    or closed rows fall in that one batch would filter (copy) all of it again."""
    target = -(-sum(b.num_rows for b in batches) // max(CHUNKS // 4, 1))
    out: list[pa.RecordBatch] = []
    group: list[pa.RecordBatch] = []
    for batch in batches:
        if group and sum(b.num_rows for b in group) + batch.num_rows > target:
            out.append(combined(group, key))
            group = []
        group.append(batch)
    return [*out, combined(group, key)]


def combined(group: list[pa.RecordBatch], key: str | None) -> pa.RecordBatch:
    if len(group) == 1:
        return group[0]
    table = pa.Table.from_batches(group)
    if key is not None:
        table = table.take(pc.sort_indices(table[key]))
    return table.combine_chunks().to_batches()[0]


def ipc_stream(table: pa.Table, schema: pa.Schema | None = None) -> pa.Buffer:
    """A table (or anything with ``schema`` and ``to_batches``, as ``stateful/tiers.Tiered``)
    as Arrow IPC stream bytes (typed as ``schema`` when given): how the processors store their
    tables and frames, and how a delta is stored. Sized first, then written once into a buffer
    of that size: a growing output stream would reallocate and copy an open state of a
    gigabyte several times over (docs/performance.md)."""
    schema = schema or table.schema
    size = pa.MockOutputStream()
    with pa.ipc.new_stream(size, schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    out = pa.allocate_buffer(size.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(out), schema) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)
    return out


def read_ipc(blob: bytes | pa.Buffer) -> pa.Table:
    return pa.ipc.open_stream(blob).read_all()


def stored(value: Kept | str | bytes | None) -> bytes | pa.Buffer | None:
    """A state field as its file stores it: text as UTF-8, a ``Kept`` value encoded."""
    if isinstance(value, Kept):
        value = value.encode(value.value)
    return value.encode() if isinstance(value, str) else value


def kept(value: Kept | str | bytes, decode: Callable[[str | bytes], Any]) -> Any:
    """A state field's value: as kept, or decoded from its stored form after a start (a
    ``Replayed`` table read whole)."""
    if isinstance(value, Kept):
        return value.value.table() if isinstance(value.value, Replayed) else value.value
    return decode(value)


@dataclass(frozen=True, eq=False)
class Replayed:
    """A keyed table as a start reads it back (``stateful/state_files.py``): its base's record
    batches, read from their file one at a time, each without the rows of the keys that the
    changes since the base name; then those keys' newest rows (``changes``).

    It is never whole in memory unless asked (``table()``): after a start at a steady rate the
    open sessions are gigabytes, and the session processor builds its tiers from it a batch
    at a time (``Tiered.started``) rather than from a copy of it all."""
    schema: pa.Schema
    key: str
    base: Callable[[], Iterator[pa.RecordBatch]] | None  # opens the base's batches, each time anew
    changes: pa.Table | None = None  # oldest first, as the files were written
    named: pa.Array | None = None  # the keys the changes name: their rows in the base are stale

    def to_batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self.base() if self.base is not None else ():
            if self.named is not None and \
                    (mask := pc.is_in(batch.column(self.key), value_set=self.named)).true_count:
                batch = batch.filter(pc.invert(mask))  # a batch no change names is not copied
            if batch.num_rows:
                yield _as(batch, self.schema)
        for batch in self.changes.to_batches() if self.changes is not None else ():
            yield _as(batch, self.schema)

    def table(self) -> pa.Table:
        return pa.Table.from_batches(list(self.to_batches()), self.schema)

    @property
    def num_rows(self) -> int:
        return sum(b.num_rows for b in self.to_batches())


def _as(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    return batch if batch.schema.equals(schema) else batch.cast(schema)
