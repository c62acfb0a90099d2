"""Gold's processor state in the stream's checkpoint (``_checkpoints/pipeline``):

    <checkpoint>/processors/<batch id>.arrow

one Arrow IPC file per micro-batch (written atomically), holding each processor's state
fields, its event-time timer and the newest event time seen (the watermark's input). A keyed
field (the open sessions' events, the fraud bursts, the offers' tables) is stored as the keys
the batch changed; every ``SNAPSHOT_EVERY`` batches a background thread writes the complete
fields beside it,

    <checkpoint>/processors/<batch id>.snapshot/<processor>.<field>

so that no micro-batch waits while gigabytes of open state are written (Spark's RocksDB
state store uploads its snapshots the same way, off the batch). A start reads the newest
file before it, back to the newest complete base (a snapshot, or a file written whole), and
applies the changes after it; a keyed table's base is read a record batch at a time
(``Replayed``), so the open sessions are never whole in memory after a start (the session
processor tiers them as they come). Micro-batch ``N`` starts from the newest file before ``N``, so a
replayed batch recomputes exactly what it computed the first time, and a restarted job carries
on where the last committed batch left off. Between micro-batches of one run the stream keeps
the state it saved in memory too (``GoldStep``), so a batch starts without reading the file
back; the file is written while the batch commits its tables (``stage``) and becomes the
batch's after them (``commit``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import BinaryType

from pipelines.stateful.gold import Held, Kept, Processor, Replayed, ipc_stream, read_ipc, rows_of, stored
from pipelines.stateful.tiers import Tiered

LAYOUT = "driver-state-3"  # bump when the file's meaning changes; an unknown layout is refused
READS = {"driver-state-2", LAYOUT}  # layout 2: every file complete (no ``delta`` column)
RETAIN = 20  # the newest state files that can each be read back (Spark keeps 100 batches)
# A keyed table (``Kept.key``) is stored as the keys that changed; a complete snapshot is
# written in the background every SNAPSHOT_EVERY files. Should none land (a slow disk, an
# error), a batch writes its file whole itself once MAX_DEPTH files have no base closer.
SNAPSHOT_EVERY = 20
MAX_DEPTH = 3 * SNAPSHOT_EVERY
DELTA_KEY = b"funnelhouse.delta_key"  # a delta's key column, in its Arrow schema's metadata
REBUILD = ("to rebuild: stop the job, move <lake>/_checkpoints/pipeline and the bronze, silver "
           "and gold "
           "tables aside, and run `funnelhouse run` (it replays the landing folder, or "
           "Kafka from its earliest retained offset; docs/operations.md)")
# ``values``: large_binary, so that one field may pass 2 GiB (layout 3 files before it used
# binary; both read the same)
FILE = pa.schema([("processor", pa.string()), ("values", pa.list_(pa.large_binary())),
                  ("timeout_ms", pa.int64()), ("delta", pa.bool_())])


def state_ids(folder: Path) -> list[int]:
    """The micro-batches with a state file in ``folder``, in order."""
    return sorted(int(f.stem) for f in folder.glob("*.arrow") if f.stem.isdigit())


def last_applied(checkpoint: Path) -> tuple[int, int | None] | None:
    """Gold's last micro-batch whose body finished (its tables and its state are
    written; Spark may not have marked it committed yet), and the newest event time (epoch ms)
    it had seen, from its newest state file; None when no batch ever finished."""
    ids = state_ids(checkpoint / "processors")
    if not ids:
        return None
    batch = ids[-1]
    with pa.ipc.open_file(checkpoint / "processors" / f"{batch}.arrow") as reader:
        latest = (reader.schema.metadata or {}).get(b"latest_ms", b"")
    return batch, int(latest) if latest else None


class StateFiles:
    """The processors' state after each micro-batch, under ``<checkpoint>/processors``."""

    def __init__(self, checkpoint: Path, processors: list[Processor]):
        self.dir = checkpoint / "processors"
        self.fields = {p.name: p.state for p in processors}
        self.chain: int | None = None  # the last batch whose file was committed here
        self.base: int | None = None  # the newest batch whose complete state is on disk
        self.complete: set[int] = set()  # the batches whose file was written whole here
        for left in self.dir.glob(".*.snapshot.*.tmp"):  # a snapshot a stopped job left unfinished
            shutil.rmtree(left, ignore_errors=True)

    def load(self, batch_id: int) -> tuple[dict[str, Held], int | None]:
        """The state micro-batch ``batch_id`` starts from, and the newest event time (ms)
        seen before it (None: no event yet)."""
        before = [i for i in state_ids(self.dir) if i < batch_id]
        if not before:
            if batch_id > 0:  # batches ran, yet no state: never guess (open sessions would vanish)
                raise RuntimeError(
                    f"gold micro-batch {batch_id} has no state to start from in {self.dir}"
                    + (" (the checkpoint holds Spark operator state of the layout before "
                       f"{LAYOUT})" if (self.dir.parent / "state").exists() else "")
                    + f"; {REBUILD}")
            return {}, None
        rows, meta = self._read(before[-1])
        latest = meta.get(b"latest_ms", b"")
        held, bases = {}, [before[-1]]
        for name, row in rows.items():
            types = self.fields[name]
            stored = list(row["values"])  # a field added after the file was written: None
            stored += [None] * (len(types.fields) - len(stored))
            values = []
            for i, (f, v) in enumerate(zip(types.fields, stored, strict=True)):
                binary = isinstance(f.dataType, BinaryType)
                if v is None:
                    values.append(None)
                elif binary and row["delta"] and (key := _delta_key(v)):  # a keyed table's changes
                    values.append(self._complete(before[-1], name, i, key, bases))
                else:  # a field stored whole: the bytes (or text) its processor decodes
                    values.append(v.to_pybytes() if binary else v.to_pybytes().decode())
            held[name] = Held(tuple(values), row["timeout_ms"])
        # the chain goes on from here: the next batch's file stores what it changed, not the
        # whole state again (gigabytes after a start at a steady rate)
        self.chain, self.base = before[-1], min(bases)
        return held, int(latest) if latest else None

    def _read(self, batch: int) -> tuple[dict[str, dict], dict]:
        """One state file: its rows by processor (each field a ``Blob``: nothing copied yet),
        and its metadata."""
        path = self.dir / f"{batch}.arrow"
        try:
            mapped = pa.memory_map(str(path))
            reader = pa.ipc.open_file(mapped)
        except FileNotFoundError:
            raise RuntimeError(f"the gold state of micro-batch {batch} is missing from {self.dir}, "
                               f"and a later file holds only what changed after it; {REBUILD}") from None
        with reader:
            meta = reader.schema.metadata or {}
            if meta.get(b"layout", b"").decode() not in READS:
                raise RuntimeError(
                    f"{self.dir} holds state of layout {meta.get(b'layout', b'?').decode()}, not "
                    f"{LAYOUT}; {REBUILD}")
            table = reader.read_all()
        whole = mapped.read_buffer(mapped.size())  # the mapping: a field's place in the file, by address
        rows = {}
        for i, name in enumerate(table["processor"].to_pylist()):
            rows[name] = {"timeout_ms": table["timeout_ms"][i].as_py(),
                          "delta": "delta" in table.column_names and bool(table["delta"][i].as_py()),
                          "values": [None if v is None else Blob(path, _place(v, whole), v.size, v)
                                     for v in _buffers(table["values"][i].values)]}
        return rows, meta

    def _complete(self, batch: int, name: str, index: int, key: str, bases: list[int]) -> Kept:
        """Field ``index`` of processor ``name`` after ``batch``, whose file holds only what
        changed: the newest complete base at or before it (a snapshot, or a field stored
        whole), with the changes of the files after that base applied. Adds the base's batch
        to ``bases``."""
        chain = []
        while True:
            snapshot = self.dir / f"{batch}.snapshot"
            if snapshot.is_dir():  # the field's complete bytes; no file: the field was empty
                field = snapshot / f"{name}.{index}"
                base = Blob(field, 0, field.stat().st_size) if field.exists() else None
                break
            rows, _ = self._read(batch)
            value = rows[name]["values"][index] if name in rows else None
            if value is None or not rows[name]["delta"] or not _delta_key(value):
                base = value
                break
            chain.append(read_ipc(value.buffer))
            batch -= 1
        bases.append(batch)
        return Kept(replayed(base, chain[::-1], key), ipc_stream, key)

    def save(self, batch_id: int, held: dict[str, Held], latest_ms: int | None) -> None:
        self.commit(self.stage(batch_id, held, latest_ms))

    def stage(self, batch_id: int, held: dict[str, Held], latest_ms: int | None) -> Staged:
        """The state after micro-batch ``batch_id``, serialised to a temporary file that
        ``commit`` then makes the batch's. The stream stages it beside the batch's table
        commits (Arrow's IPC writer releases the GIL) and commits it after them.

        When the last file committed here is the batch before's, and a complete base is fewer
        than ``MAX_DEPTH`` files back, a keyed table (``Kept.key``) is stored as what changed in
        it this batch (``delta_bytes``), not whole."""
        delta = (self.chain == batch_id - 1 and self.base is not None
                 and batch_id - self.base < MAX_DEPTH)
        rows, size, whole = [], 0, True
        for name, h in held.items():
            if h.values is None:
                continue
            keyed = delta and any(isinstance(v, Kept) and v.key for v in h.values)
            values = [delta_bytes(v) if keyed and isinstance(v, Kept) and v.key else stored(v)
                      for v in h.values]
            size += sum(v.value.nbytes if isinstance(v, Kept) and v.key else len(b)
                        for v, b in zip(h.values, values, strict=True) if b is not None)
            rows.append({"processor": name, "timeout_ms": h.timeout_ms, "values": values, "delta": keyed})
            whole = whole and not keyed
        meta = {"layout": LAYOUT, "latest_ms": "" if latest_ms is None else str(latest_ms)}
        schema = FILE.with_metadata(meta)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{batch_id}.{uuid.uuid4().hex}.arrow.tmp"
        with pa.ipc.new_file(tmp, schema) as writer:  # a record batch per processor
            for row in rows:
                writer.write_batch(pa.RecordBatch.from_arrays([
                    pa.array([row["processor"]], pa.string()), _blobs(row["values"]),
                    pa.array([row["timeout_ms"]], pa.int64()), pa.array([row["delta"]])],
                    schema=schema))
        return Staged(batch_id, tmp, size, whole)

    def commit(self, staged: Staged) -> None:
        os.replace(staged.file, self.dir / f"{staged.batch_id}.arrow")
        self.chain = staged.batch_id
        if staged.whole:
            self.complete.add(staged.batch_id)
            self.base = max(self.base or 0, staged.batch_id)
        for left in self.dir.glob(".*.arrow.tmp"):  # staged by a batch that failed before its commit
            left.unlink(missing_ok=True)
        self._retire()

    def snapshot_due(self, batch_id: int) -> bool:
        """Whether the state after ``batch_id`` (just committed) should be snapshotted."""
        return self.chain == batch_id and self.base is not None and batch_id - self.base >= SNAPSHOT_EVERY

    def snapshot(self, batch_id: int, held: dict[str, Held]) -> None:
        """Write the complete state after committed micro-batch ``batch_id``: each field in the
        form its file would store it whole, a keyed table streamed straight into its file (no
        copy of it in memory). Run off the micro-batch: held values never change in place."""
        tmp = self.dir / f".{batch_id}.snapshot.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)
        for name, h in held.items():
            for index, value in enumerate(h.values or ()):
                if isinstance(value, Kept) and value.key:
                    table = value.value
                    with pa.OSFile(str(tmp / f"{name}.{index}"), "wb") as sink, \
                            pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
                        for batch in table.to_batches():  # a cold tier's batch thawed at a time
                            writer.write_batch(batch)
                elif value is not None:
                    (tmp / f"{name}.{index}").write_bytes(stored(value))
        os.replace(tmp, self.dir / f"{batch_id}.snapshot")
        self.base = max(self.base or 0, batch_id)

    def _retire(self) -> None:
        """Delete what no start needs any more: the files and snapshots before the newest
        complete base at or before the oldest of the newest ``RETAIN`` files."""
        ids = state_ids(self.dir)
        snapshots = {int(p.name.split(".")[0]) for p in self.dir.glob("*.snapshot") if p.is_dir()}
        bases = [b for b in snapshots | self.complete if ids and b <= ids[-RETAIN:][0]]
        if not bases:
            return
        cut = max(bases)
        for old in ids:
            if old < cut:
                (self.dir / f"{old}.arrow").unlink(missing_ok=True)
        for old in snapshots:
            if old < cut:
                shutil.rmtree(self.dir / f"{old}.snapshot", ignore_errors=True)
        self.complete = {b for b in self.complete if b >= cut}


def _blobs(values: list[bytes | pa.Buffer | None]) -> pa.Array:
    """One processor's stored fields as one ``list<large_binary>`` value. The sessions' open
    events are one field of up to gigabytes: when a single field has bytes, the array is
    built over its buffer as it is; a file written whole then holds the open state twice at
    most (the tables and their IPC bytes), not four times."""
    sizes = [0 if v is None else len(v) for v in values]
    filled = [v for v in values if v]
    data = pa.py_buffer(filled[0] if len(filled) == 1 else b"".join(filled))  # wraps, or joins
    offsets = pa.py_buffer(np.cumsum([0, *sizes], dtype=np.int64).tobytes())
    valid = pa.array([v is not None for v in values]).buffers()[1]
    blobs = pa.Array.from_buffers(pa.large_binary(), len(values), [valid, offsets, data],
                                  null_count=sum(v is None for v in values))
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), blobs)


@dataclass(frozen=True)
class Staged:
    batch_id: int
    file: Path
    size: int  # the bytes of every state field (a keyed table's in memory)
    whole: bool = True  # every field stored whole: a complete base for the files after it


def _delta_key(blob: Blob) -> str | None:
    """The key column of a ``delta_bytes`` delta; None for anything else."""
    try:
        meta = pa.ipc.open_stream(blob.buffer).schema.metadata or {}
    except pa.ArrowInvalid:  # not an Arrow stream: a field stored whole
        return None
    return meta[DELTA_KEY].decode() if DELTA_KEY in meta else None


def delta_bytes(k: Kept) -> bytes:
    """What changed in keyed table ``k`` this batch: the current rows of every changed key, and
    a row marked ``_gone`` (the other columns null) for each changed key left with none."""
    table, key = k.value, k.key
    keys = k.changed if k.changed is not None else pa.array([], table.schema.field(key).type)
    if isinstance(table, Tiered):
        rows = table.rows_of(keys)
    else:
        rows = rows_of(table, key, keys) if k.by_key else table.filter(pc.is_in(table[key], value_set=keys))
    gone = keys.filter(pc.invert(pc.is_in(keys, value_set=rows[key].combine_chunks())))
    empty = {f.name: pa.nulls(len(gone), f.type) for f in table.schema if f.name != key}
    out = pa.concat_tables([
        rows.append_column("_gone", pa.repeat(pa.scalar(False), rows.num_rows)),
        pa.table({**empty, key: gone}).select(table.schema.names)
        .cast(table.schema).append_column("_gone", pa.repeat(pa.scalar(True), len(gone)))])
    return ipc_stream(out.replace_schema_metadata({DELTA_KEY: key.encode()}))


def _buffers(blobs: pa.Array) -> list[pa.Buffer | None]:
    """The values of a binary array as slices of its data buffer (a scalar's ``as_buffer``
    would copy a field of gigabytes)."""
    offsets = np.frombuffer(blobs.buffers()[1], np.int64 if blobs.type == pa.large_binary() else np.int32)
    offsets = offsets[blobs.offset:blobs.offset + len(blobs) + 1]
    data, nulls = blobs.buffers()[2], blobs.is_null().to_pylist()
    return [None if null else data.slice(int(lo), int(hi - lo)) if data is not None else pa.py_buffer(b"")
            for null, lo, hi in zip(nulls, offsets[:-1], offsets[1:], strict=True)]


def _place(field: pa.Buffer, mapped: pa.Buffer) -> int | None:
    """Where ``field`` starts in the file ``mapped`` maps; None when the reader copied it (a
    small file's fields may be)."""
    offset = field.address - mapped.address
    return offset if offset >= 0 and offset + field.size <= mapped.size else None


@dataclass(frozen=True)
class Blob:
    """A stored field's bytes: ``size`` bytes at ``offset`` in ``path`` (None: only in
    ``buffer``), and, when read from a state file, those bytes as read (mapped, not copied)."""
    path: Path
    offset: int | None
    size: int
    buffer: pa.Buffer | None = None

    def to_pybytes(self) -> bytes:
        return self.buffer.to_pybytes()

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The Arrow IPC stream the field holds, a record batch at a time, read from the file
        (not through the mapping, whose pages would stay resident: each batch's memory is freed
        once it has been used)."""
        if self.offset is None:
            yield from pa.ipc.open_stream(self.buffer)
            return
        with pa.OSFile(str(self.path)) as f:
            f.seek(self.offset)
            yield from pa.ipc.open_stream(f)

    def schema(self) -> pa.Schema:
        if self.buffer is not None:
            return pa.ipc.open_stream(self.buffer).schema
        with pa.OSFile(str(self.path)) as f:
            f.seek(self.offset)
            return pa.ipc.open_stream(f).schema


def replayed(base: Blob | None, deltas: list[pa.Table], key: str) -> Replayed:
    """A keyed table after a start: the stored complete ``base`` (None: empty) with the
    ``delta_bytes`` deltas after it applied, oldest first, each key with the rows of the newest
    delta naming it; the base read a record batch at a time (``Replayed``)."""
    changes, named = _newest(deltas, key)
    schema = base.schema() if base is not None else changes.schema
    return Replayed(schema.remove_metadata(), key, base.batches if base is not None else None, changes, named)


def apply_deltas(base: pa.Table | None, deltas: list[pa.Table]) -> pa.Table | None:
    """``base`` (None: empty) with ``delta_bytes`` deltas applied, oldest first: each key has
    the rows of the newest delta naming it (``replayed``, of a table in memory)."""
    if not deltas:
        return base
    key = deltas[0].schema.metadata[DELTA_KEY].decode()
    changes, named = _newest(deltas, key)
    schema = (base.schema if base is not None else changes.schema).remove_metadata()
    return Replayed(schema, key, base.to_batches if base is not None else None, changes, named).table()


def _newest(deltas: list[pa.Table], key: str) -> tuple[pa.Table | None, pa.Array | None]:
    """The rows of the ``delta_bytes`` deltas (oldest first) that hold, for each key they name,
    the newest delta's rows (oldest first: the order they were written in), and those keys."""
    named: pa.Array | None = None  # the keys a newer delta already gave
    parts = []
    for delta in reversed(deltas):
        keys = delta[key]
        if named is not None:
            delta = delta.filter(pc.invert(pc.is_in(keys, value_set=named)))
        parts.append(delta.filter(pc.invert(delta["_gone"])).drop_columns(["_gone"]).replace_schema_metadata(None))
        named = pc.unique(pa.chunked_array([*([] if named is None else [named]), *keys.chunks], keys.type))
    if not parts:
        return None, None
    return pa.concat_tables([p.cast(parts[-1].schema) for p in reversed(parts)]), named
