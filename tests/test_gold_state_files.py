"""The gold processors' state files: a round trip, the batch a replay starts from, and a
refusal (never a silent empty start) when the state a batch needs is missing or unreadable;
and a table another release wrote, refused before anything is written to it."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from helpers import is_delta

from pipelines import tables as T
from pipelines.config import load_settings
from pipelines.gold.sessions import EVENT_COLUMNS
from pipelines.io.delta_rs import arrow_schema
from pipelines.stateful import gold, sessions, state_files, tiers
from pipelines.stateful.gold import Held, Kept
from pipelines.stateful.state_files import StateFiles
from pipelines.stateful.tiers import Tiered
from pipelines.streams.gold import gold_processors


@pytest.fixture
def processors(spark):  # the processors parse their schemas with Spark
    return gold_processors(load_settings(environ={}, local=False))


@pytest.fixture
def files(processors, tmp_path):
    return StateFiles(tmp_path / "gold", processors)


def test_a_batch_starts_from_the_state_of_the_batch_before(files):
    files.save(0, {"sessions": Held((b"zero",), 10), "fraud": Held((b"a", b"b"), 20)}, 1_000)
    files.save(1, {"sessions": Held((b"one",), 11), "offers": Held(None, None)}, 2_000)
    held, latest = files.load(1)  # a replay of batch 1 must not see batch 1's own output
    assert held == {"sessions": Held((b"zero",), 10), "fraud": Held((b"a", b"b"), 20)}
    assert latest == 1_000
    held, latest = files.load(2)
    assert held == {"sessions": Held((b"one",), 11)} and latest == 2_000
    assert files.load(0) == ({}, None)


def test_a_field_a_processor_gained_reads_none_from_an_older_file(files):
    """A file written when fraud's state was one text field (JSON): read back as that field
    (UTF-8 bytes) and None for the field added since (``fraud.decode`` reads the JSON)."""
    files.save(0, {"fraud": Held(('["a"]',), 20)}, 1_000)
    held, _ = files.load(1)
    assert held == {"fraud": Held((b'["a"]', None), 20)}


def test_open_sessions_held_as_a_table_are_read_back_equal(files):
    """The sessions' events stay an Arrow table between micro-batches; the file stores them as
    Arrow IPC bytes, and a start from the file reads back the same table."""
    events = pa.table({name: [None, None] for name in sessions.HELD.names}, schema=sessions.HELD)
    events = events.set_column(0, "journey", pa.array([7, 9], pa.int64()))
    kept = Held((Kept(events, sessions.encode),), 10)
    files.save(0, {"sessions": kept, "fraud": Held((b"a", b"b"), 20)}, 1_000)
    held, _ = files.load(1)
    assert isinstance(held["sessions"].values[0], bytes)
    assert sessions.decode(held["sessions"].values[0]).equals(events)
    assert held["fraud"] == Held((b"a", b"b"), 20)



def test_fields_of_every_kind_in_one_processor_are_read_back_in_place(files):
    """A processor's fields are stored side by side: a table (its IPC buffer), a missing field
    and bytes come back as they were, in their places."""
    events = _held([(3, 30), (1, 10)])
    files.save(0, {"offers": Held((None, Kept(events, sessions.encode), b"x"), 5),
                   "sessions": Held((Kept(events, sessions.encode),), 6)}, 1_000)
    held, _ = files.load(1)
    none, table, text = held["offers"].values
    assert none is None and text == b"x" and sessions.decode(table).equals(events)
    assert sessions.decode(held["sessions"].values[0]).equals(events)


def test_a_file_of_binary_fields_from_before_large_binary_is_read(files):
    """Files written before the fields became ``large_binary`` (one table, ``binary``)."""
    old = pa.schema([("processor", pa.string()), ("values", pa.list_(pa.binary())),
                     ("timeout_ms", pa.int64()), ("delta", pa.bool_())],
                    metadata={"layout": state_files.LAYOUT, "latest_ms": "1000"})
    files.dir.mkdir(parents=True)
    with pa.ipc.new_file(files.dir / "0.arrow", old) as writer:
        writer.write_table(pa.Table.from_pylist(
            [{"processor": "fraud", "values": [b"a", None], "timeout_ms": 20, "delta": False}], schema=old))
    assert files.load(1) == ({"fraud": Held((b"a", None), 20)}, 1_000)

def _held(rows: list[tuple[int, int]]) -> pa.Table:
    """Held session events (journey, t); the other columns null."""
    table = sessions.HELD.empty_table().to_pydict()
    table = {name: [None] * len(rows) for name in table}
    table["journey"], table["t"] = [j for j, _ in rows], [t for _, t in rows]
    return pa.table(table, schema=sessions.HELD)


def _pairs(value) -> list[tuple[int, int]]:
    table = sessions.decode(value)  # kept, or stored; a table read back (Replayed) read whole
    return sorted(zip(table["journey"].to_pylist(), table["t"].to_pylist(), strict=True))



def test_open_sessions_are_stored_as_the_journeys_that_changed_and_read_back_whole(files):
    """Between complete files, a batch's file holds only the journeys whose events changed
    (grew, or closed and left); a start from it reads the whole table back."""
    def kept(rows, changed=None):
        return Held((Kept(_held(rows), sessions.encode, "journey",
                          None if changed is None else pa.array(changed, pa.int64())),), 10)
    files.save(0, {"sessions": kept([(1, 100), (1, 200), (2, 300)])}, 1_000)
    files.save(1, {"sessions": kept([(1, 100), (1, 200), (1, 250), (2, 300), (3, 400)], [1, 3])}, 2_000)
    files.save(2, {"sessions": kept([(1, 100), (1, 200), (1, 250), (3, 400)], [2])}, 3_000)  # 2 closed
    assert not is_delta(files, 0) and is_delta(files, 1) and is_delta(files, 2)
    held, latest = files.load(3)
    assert _pairs(held["sessions"].values[0]) == [(1, 100), (1, 200), (1, 250), (3, 400)]
    assert latest == 3_000
    before_closing = files.load(2)[0]["sessions"].values[0]
    assert _pairs(before_closing) == [(1, 100), (1, 200), (1, 250), (2, 300), (3, 400)]

    restarted = StateFiles(files.dir.parent, [])  # a new run writes a complete file first
    restarted.save(3, {"sessions": kept([(3, 400)], [1])}, 4_000)
    assert not is_delta(restarted, 3)
    (files.dir / "1.arrow").unlink()  # a file a later one builds on
    with pytest.raises(RuntimeError, match="state of micro-batch 1 is missing.*to rebuild"):
        files.load(3)


def test_after_a_start_the_next_file_stores_only_what_changed_and_reads_back_whole(files, processors,
                                                                                   monkeypatch):
    """A new run that read the state back goes on with the chain: its first file holds the
    journeys it changed, not the whole open state again (gigabytes at a steady rate)."""
    monkeypatch.setattr(state_files, "SNAPSHOT_EVERY", 2)
    _run(files, 4, snapshots=True)  # a snapshot after 2; files 3 builds on it
    restarted = StateFiles(files.dir.parent, processors)
    assert _pairs(restarted.load(4)[0]["sessions"].values[0]) == [(1, 3), (2, 3)]
    closed_one = Kept(_held([(2, 4)]), sessions.encode, "journey", pa.array([1, 2], pa.int64()))
    restarted.save(4, {"sessions": Held((closed_one,), 10)}, 1_000)  # journey 1 closed, 2 grew
    restarted.save(5, {"sessions": _one(5, [2, 9])}, 1_000)
    assert is_delta(restarted, 4) and is_delta(restarted, 5)
    assert restarted.snapshot_due(5)  # three batches past the snapshot the chain builds on
    again = StateFiles(files.dir.parent, processors)
    assert _pairs(again.load(5)[0]["sessions"].values[0]) == [(2, 4)]
    assert _pairs(again.load(6)[0]["sessions"].values[0]) == [(2, 5), (9, 5)]


def _one(batch: int, journeys: list[int]) -> Held:
    """Sessions state after ``batch``: journey ``j`` holds one event at time ``batch``, and
    every journey is named as changed."""
    return Held((Kept(_held([(j, batch) for j in journeys]), sessions.encode, "journey",
                      pa.array(journeys, pa.int64())),), 10)


def _run(files, batches: int, snapshots: bool) -> None:
    for batch in range(batches):
        held = {"sessions": _one(batch, [1, 2])}
        files.save(batch, held, 1_000)
        if snapshots and files.snapshot_due(batch):
            files.snapshot(batch, held)


def test_complete_snapshots_are_written_beside_the_files_and_are_what_a_start_builds_on(files, monkeypatch):
    monkeypatch.setattr(state_files, "SNAPSHOT_EVERY", 2)
    _run(files, 6, snapshots=True)
    assert [is_delta(files, b) for b in range(6)] == [False] + [True] * 5  # no batch writes it all
    assert sorted(p.name for p in files.dir.glob("*.snapshot")) == ["2.snapshot", "4.snapshot"]
    (files.dir / "3.arrow").unlink()  # a start after batch 5 needs the snapshot of 4 and file 5 only
    assert _pairs(files.load(6)[0]["sessions"].values[0]) == [(1, 5), (2, 5)]
    assert _pairs(files.load(5)[0]["sessions"].values[0]) == [(1, 4), (2, 4)]  # the snapshot


def test_a_snapshot_holds_fields_kept_as_bytes_and_leaves_out_empty_ones(files, monkeypatch):
    """After a start, a field a processor has not touched yet is still the bytes it was read
    as; the snapshot holds it too. A processor with no state has no file in it."""
    monkeypatch.setattr(state_files, "SNAPSHOT_EVERY", 1)
    files.save(0, {"sessions": _one(0, [1, 2])}, 1_000)
    files.save(1, {"sessions": _one(1, [1])}, 1_000)
    as_read = sessions.encode(_held([(1, 1), (2, 0)]))
    files.snapshot(1, {"sessions": Held((as_read,), 10), "offers": Held(None, None)})
    assert sorted(p.name for p in (files.dir / "1.snapshot").iterdir()) == ["sessions.0"]
    files.save(2, {"sessions": _one(2, [7])}, 1_000)
    (files.dir / "0.arrow").unlink()
    (files.dir / "1.arrow").unlink()
    assert _pairs(files.load(3)[0]["sessions"].values[0]) == [(1, 1), (2, 0), (7, 2)]


def test_with_no_snapshot_a_file_is_written_whole_every_max_depth(files, monkeypatch):
    monkeypatch.setattr(state_files, "MAX_DEPTH", 3)
    _run(files, 7, snapshots=False)
    assert [is_delta(files, b) for b in range(7)] == [False, True, True, False, True, True, False]
    assert _pairs(files.load(6)[0]["sessions"].values[0]) == [(1, 5), (2, 5)]


def test_old_files_and_snapshots_go_once_no_retained_file_needs_them(files, monkeypatch):
    monkeypatch.setattr(state_files, "SNAPSHOT_EVERY", 3)
    monkeypatch.setattr(state_files, "RETAIN", 4)
    _run(files, 14, snapshots=True)  # snapshots after 3, 6, 9 and 12
    assert state_files.state_ids(files.dir) == [9, 10, 11, 12, 13]  # 10-13 build on the snapshot of 9
    assert sorted(p.name for p in files.dir.glob("*.snapshot")) == ["12.snapshot", "9.snapshot"]
    for batch in (10, 11, 12, 13):
        assert _pairs(files.load(batch + 1)[0]["sessions"].values[0]) == [(1, batch), (2, batch)]


def test_a_staged_state_becomes_the_batchs_only_when_committed(files):
    """The stream writes a batch's state beside its table commits and commits it after them:
    until then a restart starts that batch from the state before it."""
    files.save(0, {"sessions": Held((b"zero",), 10)}, 1_000)
    failed = files.stage(1, {"sessions": Held((b"lost",), 11)}, 2_000)  # the batch then died
    assert files.load(2) == ({"sessions": Held((b"zero",), 10)}, 1_000)
    assert failed.file.exists()
    files.commit(files.stage(1, {"sessions": Held((b"one",), 11)}, 2_000))  # its replay
    assert files.load(2) == ({"sessions": Held((b"one",), 11)}, 2_000)
    assert not list(files.dir.glob(".*"))  # the failed batch's file is gone too


def test_missing_state_after_batch_zero_is_refused(files):
    (files.dir.parent / "state").mkdir(parents=True)  # Spark operator state: the layout before
    with pytest.raises(RuntimeError, match="no state to start from.*layout before.*to rebuild"):
        files.load(5)


def test_an_unknown_layout_is_refused(files):
    files.dir.mkdir(parents=True)
    schema = pa.schema([("processor", pa.string())]).with_metadata({"layout": "driver-state-0"})
    with pa.ipc.new_file(files.dir / "0.arrow", schema) as writer:
        writer.write_table(schema.empty_table())
    with pytest.raises(RuntimeError, match="layout driver-state-0, not driver-state-3"):
        files.load(1)


def test_a_table_written_by_another_release_is_refused_naming_its_columns(tmp_path):
    """silver/events as the release before keyed IPs wrote it (a raw ``ip``, no ``ip_hash``
    or ``ip_prefix``): the job refuses it before writing, and says how to rebuild."""
    old = [f for f in arrow_schema(T.SILVER_EVENTS) if f.name not in ("ip_hash", "ip_prefix")]
    write_deltalake(str(tmp_path / "silver" / "events"),
                    pa.schema([*old, pa.field("ip", pa.string())]).empty_table())
    with pytest.raises(T.SchemaMismatch, match=r"lacks ip_hash, ip_prefix and has ip .*docs/operations.md"):
        T.ensure(None, str(tmp_path), T.SILVER_EVENTS)
    assert T.ensure(None, str(tmp_path / "new"), T.SILVER_EVENTS)  # a new lake: created
    T.ensure(None, str(tmp_path / "new"), T.SILVER_EVENTS)  # and then accepted as it is


def test_keep_rows_filters_like_arrow_without_copying_the_batches_it_keeps_whole(monkeypatch):
    from pipelines.stateful.gold import keep_rows

    batches = [pa.record_batch({"k": pa.array(range(i * 10, i * 10 + 10), pa.int64())}) for i in range(3)]
    table = pa.Table.from_batches(batches)
    mask = pa.chunked_array([[True] * 10, [i % 2 == 0 for i in range(10)], [False] * 10])
    out = keep_rows(table, mask)
    assert out.equals(table.filter(mask))
    assert out["k"].to_pylist() == [*range(10), 10, 12, 14, 16, 18]
    kept = out.to_batches()[0].column(0).buffers()[1]
    assert kept.address == batches[0].column(0).buffers()[1].address  # the same memory: not copied
    monkeypatch.setattr(gold, "CHUNKS", 1)
    assert keep_rows(table, mask).column(0).num_chunks == 1  # past CHUNKS batches: combined


def test_past_chunks_batches_the_small_ones_are_combined_and_a_large_one_is_left_whole(monkeypatch):
    from pipelines.stateful.gold import keep_rows

    monkeypatch.setattr(gold, "CHUNKS", 16)  # 17 batches: combined to at most 16 / 2 + 1
    sizes = [100, *[2] * 10, 50, *[1] * 5]
    starts = np.cumsum([0, *sizes])
    batches = [pa.record_batch({"k": pa.array(range(a, a + n), pa.int64())})
               for a, n in zip(starts, sizes, strict=False)]
    table = pa.Table.from_batches(batches)
    out = keep_rows(table, pa.chunked_array([[True] * table.num_rows]))
    assert out.equals(table)  # the same rows, in the same order
    assert [len(b) for b in out.to_batches()] == [100, 20, 50, 5]  # 175 / 4: 44 rows, or one batch
    big = out.to_batches()[0].column(0).buffers()[1]
    assert big.address == batches[0].column(0).buffers()[1].address  # the large one: not copied


def test_a_chain_of_changes_gives_each_key_the_rows_of_the_newest_change_naming_it():
    def delta(rows: list[tuple[int, int]], gone: list[int]) -> pa.Table:
        kept = Kept(_held(rows + [(g, 0) for g in gone]), sessions.encode, "journey",
                    pa.array(sorted({j for j, _ in rows} | set(gone)), pa.int64()))
        table = _held(rows)  # what is left once the gone keys' rows are dropped
        return gold.read_ipc(state_files.delta_bytes(Kept(table, kept.encode, "journey", kept.changed)))

    base = _held([(1, 10), (2, 20), (3, 30)])
    first = delta([(1, 11), (1, 12)], gone=[2])
    second = delta([(1, 13), (4, 40)], gone=[])
    assert _pairs(Kept(state_files.apply_deltas(base, [first, second]), None)) == [(1, 13), (3, 30), (4, 40)]
    in_reverse = state_files.apply_deltas(base, [second, first])
    assert _pairs(Kept(in_reverse, None)) == [(1, 11), (1, 12), (3, 30), (4, 40)]
    assert _pairs(Kept(state_files.apply_deltas(None, [first, second]), None)) == [(1, 13), (4, 40)]
    assert state_files.apply_deltas(base, []) is base


def test_a_base_read_back_loses_the_rows_of_changed_keys_and_a_batch_none_names_is_not_copied():
    """``Replayed``: the base's record batches come one at a time, each without the rows of the
    keys the changes name (any key type), and one that no change names is passed on as it is."""
    untouched = _held([(1, 10), (2, 20)]).to_batches()[0]
    touched = _held([(5, 50), (6, 60), (7, 70)]).to_batches()[0]
    newest = _held([(6, 61)])
    replayed = gold.Replayed(sessions.HELD, "journey", lambda: iter([untouched, touched]), newest,
                             pa.array([6, 7], pa.int64()))
    batches = list(replayed.to_batches())
    assert batches[0] is untouched
    assert [b.column(0).to_pylist() for b in batches] == [[1, 2], [5], [6]]
    assert _pairs(Kept(replayed, None)) == [(1, 10), (2, 20), (5, 50), (6, 61)]
    assert replayed.num_rows == 4
    texts = pa.record_batch({"k": ["a", "b", None], "v": [1, 2, 3]})
    by_text = gold.Replayed(texts.schema, "k", lambda: iter([texts]), None, pa.array(["b"]))
    assert by_text.table().to_pydict() == {"k": ["a", None], "v": [1, 3]}


def _batches(*keys: list[int]) -> pa.Table:
    """A table of (k, v) whose record batches hold ``keys``, ``v`` numbering each batch's rows."""
    return pa.Table.from_batches([pa.record_batch({"k": pa.array(ks, pa.int64()),
                                                   "v": pa.array(range(len(ks)), pa.int64())})
                                  for ks in keys])


def test_key_rows_finds_a_keys_rows_in_every_batch_and_leaves_the_batches_without_one_whole():
    table = _batches([1, 1, 3, 5], [2, 3, 3, 8], [], [4, 6])
    found, rest = gold.key_rows(table, "k", np.array([9, 3, 8, 1, 3]))
    assert sorted(zip(found["k"].to_pylist(), found["v"].to_pylist(), strict=True)) == [
        (1, 0), (1, 1), (3, 1), (3, 2), (3, 2), (8, 3)]
    assert list(zip(rest["k"].to_pylist(), rest["v"].to_pylist(), strict=True)) == [
        (5, 3), (2, 0), (4, 0), (6, 1)]
    untouched = table.to_batches()[3].column(0).buffers()[1]
    assert rest.to_batches()[-1].column(0).buffers()[1].address == untouched.address  # not copied
    assert gold.rows_of(table, "k", np.array([9, 3, 8, 1, 3])).equals(found)  # the found rows alone
    none, same = gold.key_rows(table, "k", np.array([], np.int64))
    assert none.num_rows == 0 and same.equals(table)


def test_batches_combined_for_a_key_are_sorted_by_it_and_an_unsorted_batch_is_sorted(monkeypatch):
    monkeypatch.setattr(gold, "CHUNKS", 2)
    table = _batches([5, 7], [1, 9], [2, 3])
    out = gold.keep_rows(table, pa.chunked_array([[True] * 6]), "k")
    assert [b.column(0).to_pylist() for b in out.to_batches()] == [[1, 2, 3, 5, 7, 9]]
    assert [b.column(0).to_pylist() for b in gold.by_key(_batches([3, 1, 2], [4, 5]), "k").to_batches()] \
        == [[1, 2, 3], [4, 5]]


def test_a_start_tiers_the_open_sessions_a_record_batch_at_a_time(files, processors, monkeypatch):
    """After a start the open sessions are read from their stored base a record batch at a time
    and frozen as they come: Arrow never holds the stored table whole (at a steady rate it is
    gigabytes, and a copy of it was a restart's peak memory). The rows all come back."""
    far, n = 10**13, 400_000  # every held session closes long after the watermark: all go cold
    journey = np.arange(n) // 4
    rows = pa.table({"journey": journey, "tracking_id": pa.array(np.char.add("trk-", journey.astype(str))),
                     "t": np.arange(n), "closes": np.full(n, far)})
    rows = pa.table({f.name: rows[f.name] if f.name in rows.column_names else pa.nulls(n, f.type)
                     for f in sessions.HELD}, schema=sessions.HELD)
    table = pa.Table.from_batches(rows.to_batches(max_chunksize=20_000))
    stored_kept = Kept(Tiered(table, "journey", "closes"), sessions.encode, "journey", by_key=True)
    files.save(0, {"sessions": Held((stored_kept,), far)}, 1_000)
    changed = stored_kept.changing(stored_kept.value, pa.array([5, 7]))
    files.save(1, {"sessions": Held((changed,), far)}, 1_000)
    whole = table.nbytes
    del rows, table, stored_kept, changed
    before = pa.total_allocated_bytes()
    held, _ = files.load(2)
    peak = 0
    freeze = tiers.Cold.freeze.__func__

    def watched(cls, batch, key, timer):
        nonlocal peak
        peak = max(peak, pa.total_allocated_bytes() - before)
        return freeze(cls, batch, key, timer)

    monkeypatch.setattr(tiers.Cold, "freeze", classmethod(watched))
    new = pd.DataFrame({"journey": [n], "tracking_id": ["new"], "t": [far - 10**9], "step": [1],
                        "tie": [0]})
    new = new.reindex(columns=EVENT_COLUMNS).astype(
        {"journey": "int64", "t": "int64", "step": "int8", "tie": "int64", "price": "float64",
         "quantity": "float64"})
    process = next(p for p in processors if p.name == "sessions")
    _, after = gold.advance(process, new, held.pop("sessions"), 1, 2)
    assert 0 < peak < whole / 2, (peak, whole)
    back = sessions.decode(after.values[0])
    assert back.num_rows == n + 1
    assert sorted(back["journey"].to_pylist()) == [*journey.tolist(), n]
