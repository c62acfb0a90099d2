"""The two tiers of a held table (``stateful/tiers.py``) against the plain table they stand
for: whatever is frozen or thawed, every operation gives the rows the plain table would."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.stateful import tiers
from pipelines.stateful.gold import Held, Kept, by_key, ipc_stream, stored
from pipelines.stateful.state_files import StateFiles, delta_bytes
from pipelines.stateful.tiers import Cold, Tiered

SCHEMA = pa.schema([("journey", pa.int64()), ("closes", pa.int64()), ("tracking_id", pa.string()),
                    ("price", pa.float64())])
TINY = {"RECENT_ROWS": 2, "COLD_ROWS": 3, "FREEZE_ROWS": 7}


def _batch(rows: list[tuple[int, int]]) -> pa.Table:
    """Rows of (journey, closes), sorted by journey as the held tables are."""
    table = pa.table({"journey": [j for j, _ in rows], "closes": [c for _, c in rows],
                      "tracking_id": [f"t{j}" for j, _ in rows],
                      "price": [None if c % 3 else c / 7 for _, c in rows]}, schema=SCHEMA)
    return by_key(table, "journey")


def _rows(table) -> list[tuple]:
    """A table's rows, in one order whatever its tiers or batches."""
    table = table.table() if isinstance(table, Tiered) else table
    return sorted(tuple(r.values()) for r in table.to_pylist())


def test_rows_frozen_past_the_newest_are_found_by_key_and_thawed_before_they_are_due():
    with mock.patch.multiple(tiers, **TINY):
        held = Tiered(SCHEMA.empty_table(), "journey", "closes")
        for j in range(5):  # five micro-batches: journey j's two events, closing at 100 + j
            held = held.with_hot(_batch([(10 + j, 100 + j), (10 + j, 100 + j)]))
        held = held.settled(thaw_upto=50, freeze_above=60)
        # the newest batch (2 rows) stays hot; the four before, 8 rows, are more than
        # FREEZE_ROWS: three whole batches (6 rows) freeze, as cold batches of 3 rows or more
        assert [c.num_rows for c in held.cold] == [4, 2]
        assert held.hot.num_rows == 4 and held.num_rows == 10
        cold_keys = pa.chunked_array([c.keys.column(0) for c in held.cold])
        assert sorted(pc.unique(cold_keys).to_pylist()) == [10, 11, 12]
        assert held.low() == 100

        found, rest = held.key_rows(np.array([11, 14, 99]))
        assert _rows(found) == _rows(_batch([(11, 101)] * 2 + [(14, 104)] * 2))
        assert _rows(rest) == _rows(_batch([(j, 100 + j - 10) for j in (10, 12, 13)] * 2))
        # journey 11's cold batch was thawed, its other rows turned hot; the other cold batch stays
        assert all(not c.holds(np.array([11])) for c in rest.cold) and rest.cold

        done, left = rest.due(102)  # closes <= 102: journeys 10 and 12, wherever they were
        assert _rows(done) == _rows(_batch([(10, 100), (12, 102)] * 2))
        assert _rows(left) == _rows(_batch([(13, 103)] * 2)) and left.low() == 103

        again = left.settled(thaw_upto=200, freeze_above=300)
        assert again.cold == () and _rows(again) == _rows(left)


def test_a_table_read_back_after_a_start_is_frozen_by_bands_of_its_timer():
    """After a start the whole held table is tiered at once; each cold batch holds one band
    of timers, so that it thaws when the watermark nears that band, not the earliest timer."""
    rng = np.random.default_rng(3)
    rows = list(zip(rng.integers(0, 400, 3_000).tolist(), rng.integers(0, 100, 3_000).tolist(), strict=True))
    table = pa.concat_tables([_batch(rows[:1_000]), _batch(rows[1_000:])])  # two record batches
    with mock.patch.multiple(tiers, COLD_ROWS=300):
        held = Tiered.started(table, "journey", "closes", freeze_above=29, band=20)
    assert _rows(held) == _rows(table)
    assert held.hot.num_rows == sum(c <= 29 for _, c in rows) and pc.max(held.hot["closes"]).as_py() <= 29
    for c in held.cold:
        closes = c.thaw(SCHEMA).column("closes").to_numpy()
        assert c.num_rows <= 300 and c.low == closes.min()
        assert ((closes - 30) // 20 == (c.low - 30) // 20).all()  # one band
        assert (np.diff(c.keys.column(0).to_numpy()) >= 0).all()
    assert sorted({(c.low - 30) // 20 for c in held.cold}) == [0, 1, 2, 3]


def test_a_cold_batch_compresses_and_thaws_to_the_same_rows():
    rng = np.random.default_rng(7)
    journeys = np.sort(rng.integers(0, 5_000, 20_000))
    batch = _batch(list(zip(journeys.tolist(), (journeys % 50).tolist(), strict=True))).to_batches()[0]
    cold = Cold.freeze(batch, "journey", "closes")
    assert cold.thaw(SCHEMA).equals(batch)
    assert cold.low == 0 and cold.num_rows == 20_000
    assert cold.nbytes < batch.nbytes / 2  # repeated ids and a sparse column compress


def test_a_tiered_table_is_stored_whole_or_as_the_changed_keys_with_its_cold_rows(tmp_path):
    with mock.patch.multiple(tiers, **{**TINY, "RECENT_ROWS": 0, "FREEZE_ROWS": 100}):
        held = Tiered(SCHEMA.empty_table(), "journey", "closes")
        for j in range(4):
            held = held.with_hot(_batch([(j, 500 + j)] * 3))
        held = held.settled(thaw_upto=0, freeze_above=10)
    assert held.hot.num_rows == 0 and held.num_rows == 12  # every row cold
    plain = held.table()
    kept = Kept(held, lambda t: ipc_stream(t, SCHEMA), "journey", changed=pa.array([2, 9]), by_key=True)
    delta = pa.ipc.open_stream(delta_bytes(kept)).read_all()
    rows = delta.filter(pc.invert(delta["_gone"])).drop_columns(["_gone"])
    assert _rows(rows) == _rows(_batch([(2, 502)] * 3))
    assert delta.filter(delta["_gone"])["journey"].to_pylist() == [9]

    stored_whole = pa.ipc.open_stream(stored(kept)).read_all()
    assert _rows(stored_whole) == _rows(plain)

    files = StateFiles(tmp_path, [])
    files.snapshot(3, {"sessions": Held((kept,), 500)})
    snapshot = tmp_path / "processors" / "3.snapshot" / "sessions.0"
    assert _rows(pa.ipc.open_stream(pa.memory_map(str(snapshot))).read_all()) == _rows(plain)


row = st.tuples(st.integers(0, 12), st.integers(0, 40))  # (journey, closes)
op = st.one_of(
    st.tuples(st.just("add"), st.lists(row, min_size=1, max_size=10)),
    st.tuples(st.just("keys"), st.lists(st.integers(0, 14), min_size=1, max_size=4)),
    st.tuples(st.just("due"), st.integers(0, 40)),
    st.tuples(st.just("settle"), st.integers(-5, 20), st.integers(0, 5)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=25), st.sampled_from([TINY, {"RECENT_ROWS": 0, "COLD_ROWS": 1, "FREEZE_ROWS": 4},
                                                  {"RECENT_ROWS": 5, "COLD_ROWS": 8, "FREEZE_ROWS": 100}]),
       st.integers(-5, 20))
def test_any_sequence_of_operations_gives_the_rows_of_the_plain_table(ops, sizes, horizon):
    """As in the processor, the tiers are settled after every operation (at ``horizon``), and
    now and then at another horizon."""
    with mock.patch.multiple(tiers, **sizes):
        held = Tiered(SCHEMA.empty_table(), "journey", "closes")
        model: list[tuple] = []
        for name, *args in ops:
            if name == "add":
                batch = _batch(args[0])
                held = held.with_hot(batch)
                model += _rows(batch)
            elif name == "keys":
                found, held = held.key_rows(np.array(args[0], np.int64))
                assert _rows(found) == sorted(r for r in model if r[0] in args[0])
                model = [r for r in model if r[0] not in args[0]]
            elif name == "due":
                done, held = held.due(args[0])
                assert _rows(done) == sorted(r for r in model if r[1] <= args[0])
                model = [r for r in model if r[1] > args[0]]
            else:
                held = held.settled(args[0], args[0] + args[1])
                assert all(c.low > args[0] for c in held.cold)
            assert _rows(held) == sorted(model)
            held = held.settled(horizon, horizon + 2)
            assert all(c.low > horizon for c in held.cold)
            assert _rows(held) == sorted(model)
            keys = [b.column("journey").to_numpy() for b in held.to_batches()]
            assert all((j[1:] >= j[:-1]).all() for j in keys)
            assert held.low() == (min(r[1] for r in model) if model else None)
