"""The fraud processor's state across micro-batches, driven by ``stateful/gold.advance`` as
the stream drives it: hand-built bursts, what each batch re-runs and stores, and a restart
from the state files after every batch."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.config import FraudRule, FraudSettings
from pipelines.stateful.fraud import EVENT_COLUMNS, entity_keys, find_bursts, processor
from pipelines.stateful.gold import Held, Kept, advance, stored
from pipelines.stateful.state_files import StateFiles

T0 = 1_793_000_000_000
# R1: 10 adds within 5 s per user; W: 3 adds within 15 s (a window longer than two batches)
SETTINGS = FraudSettings(rules=[*FraudSettings().rules[:1], FraudRule(
    name="W", event_types=["add_to_cart"], key="user", measure="count", threshold=3, window="15 seconds")])
DELAY = 1000  # the watermark: the newest event time seen, less 1 s


def adds(user: str, offsets_ms: list[int], rule: str = "R1") -> pd.DataFrame:
    return pd.DataFrame({"rule": rule, "entity_id": user, "t": [T0 + o for o in offsets_ms], "value": 1,
                         "event_id": [f"{user}-{i:03d}" for i in range(len(offsets_ms))]},
                        columns=EVENT_COLUMNS)


# "busy" adds every 400 ms for 60 s and never pauses for a window; "early" adds 12 times in
# its first 1.1 s and stops; "late" adds 10 times from +30 s; "slow" once at +12.5 s, which W
# holds open (unflagged) until +27.5 s.
EVENTS = pd.concat([adds("busy", [i * 400 for i in range(150)]), adds("early", [i * 100 for i in range(12)]),
                    adds("late", [30_000 + i * 300 for i in range(10)]), adds("slow", [12_500], "W")],
                   ignore_index=True)


def _batches(events: pd.DataFrame, every_ms: int = 6000):
    """The events in arrival slices of ``every_ms``, then one quiet batch an hour later."""
    slot = (events["t"] - T0) // every_ms
    for n in range(int(slot.max()) + 1):
        yield events[slot == n]
    yield events.iloc[:0]


def _run(events: pd.DataFrame, files: StateFiles | None = None) -> tuple[pd.DataFrame, list[set[str]]]:
    """Every flag, and per batch the entities whose held events the state file stores anew."""
    p = processor(SETTINGS)
    held, latest, flags, stored = Held(), 0, [], []
    for batch_id, rows in enumerate(_batches(events)):
        if files is not None and batch_id:
            held = files.load(batch_id)[0].get("fraud", Held())  # a restart before every batch
        newest = int(rows["t"].max()) if len(rows) else latest + 3_600_000
        before, latest = max(latest - DELAY, 0), max(latest, newest)
        out, held = advance(p, rows, held, before, latest - DELAY)
        flags += out
        kept = held.values[0] if held.values is not None else None
        stored.append(_entities(kept) if isinstance(kept, Kept) else set())
        if files is not None:
            files.save(batch_id, {"fraud": held}, latest)
    return pd.concat(flags, ignore_index=True).drop(columns="kind"), stored


def _entities(kept: Kept) -> set[str]:
    names = {k: e for rule in ("R1", "W") for e in ("busy", "early", "late", "slow")
             for k in entity_keys(pd.Series([rule]), pd.Series([e])).tolist()}
    return {names[k] for k in (kept.changed.to_pylist() if kept.changed is not None else [])}


def _by_entity(flags: pd.DataFrame) -> pd.DataFrame:
    return flags.sort_values("entity_id").reset_index(drop=True)


def test_each_burst_flags_once_as_one_batch_over_everything_does():
    flags, _ = _run(EVENTS)
    assert _by_entity(flags)[["entity_id", "event_count", "peak_value"]].values.tolist() == [
        ["busy", 150, 13], ["early", 12, 12], ["late", 10, 10]]
    whole = find_bursts(EVENTS, SETTINGS.rules, None, SETTINGS.max_evidence)[0]
    pd.testing.assert_frame_equal(_by_entity(flags), _by_entity(whole), check_dtype=False)


def test_a_batch_re_runs_and_stores_only_the_entities_it_touched_or_closed():
    _, stored = _run(EVENTS)
    assert stored[0] == {"busy", "early"}
    assert stored[1] == {"busy", "early"}  # the watermark (+5 s) passes early's +1.1 s + 5 s
    assert stored[2] == {"busy", "slow"}  # early is gone; late not yet begun
    assert stored[3] == {"busy"}  # slow is held, neither touched nor closed: not read, not stored
    assert stored[4] == {"busy", "slow"}  # the watermark (+28.6 s) closes slow's burst
    assert stored[5] == {"busy", "late"}


def test_a_restart_before_every_batch_gives_the_same_flags(spark, tmp_path):  # schemas parse with Spark
    files = StateFiles(tmp_path / "gold", [processor(SETTINGS)])
    flags, _ = _run(EVENTS, files)
    assert _by_entity(flags).equals(_by_entity(_run(EVENTS)[0]))
    file = pa.ipc.open_file(files.dir / "3.arrow").read_all().to_pylist()[0]
    assert file["delta"]  # the held events are stored as what changed


@pytest.mark.parametrize("every_ms", [700, 2500, 11_000])
def test_any_batching_flags_the_same(every_ms):
    """Slices of other sizes, and events out of order within a slice."""
    shuffled = EVENTS.sample(frac=1, random_state=every_ms)
    p, held, latest, flags = processor(SETTINGS), Held(), 0, []
    for rows in _batches(shuffled, every_ms):
        newest = int(rows["t"].max()) if len(rows) else latest + 3_600_000
        before, latest = max(latest - DELAY, 0), max(latest, newest)
        out, held = advance(p, rows, held, before, latest - DELAY)
        flags += out
    got = pd.concat(flags, ignore_index=True).drop(columns="kind")
    assert _by_entity(got)[["entity_id", "event_count", "measure_value", "peak_value"]].values.tolist() == [
        ["busy", 150, 150, 13], ["early", 12, 12, 12], ["late", 10, 10, 10]]
    assert held.values is None  # the quiet batch closed everything
    assert np.array_equal(_by_entity(got)["evidence_event_ids"].map(len), [150, 12, 10])


def test_after_a_start_the_bursts_of_a_rule_removed_from_config_go_and_are_stored_as_gone():
    p, held, latest = processor(SETTINGS), Held(), 0
    for rows in list(_batches(EVENTS))[:3]:  # slow's W burst is held open after these
        before, latest = max(latest - DELAY, 0), max(latest, int(rows["t"].max()))
        held = advance(p, rows, held, before, latest - DELAY)[1]
    assert "slow" in set(held.values[0].value["entity_id"].to_pylist())
    started = Held(tuple(stored(v) for v in held.values), held.timeout_ms)  # as read from its file
    only_r1 = processor(FraudSettings(rules=SETTINGS.rules[:1]))
    _, after = advance(only_r1, adds("busy", [12_100]), started, latest - DELAY, latest - DELAY)
    left = after.values[0]
    assert set(left.value["rule"].to_pylist()) == {"R1"}
    assert "slow" in _entities(left)  # named as changed: the state file stores it as gone
