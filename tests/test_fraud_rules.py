"""Fraud bursts on hand-built event sequences (pure pandas: no Spark needed)."""

import random
import warnings
from datetime import datetime

import pandas as pd

from pipelines.config import FraudSettings
from pipelines.stateful.fraud import EVENT_COLUMNS, find_bursts

RULES = FraudSettings().rules  # R1: 10 adds/5 s per user; R2: 50 items/10 s per user; R3: 5 buys/10 s per IP
T0 = int(datetime(2026, 11, 2, 10, 0).timestamp() * 1000)


def events(rule: str, entity: str, offsets_ms: list[int], values: list[int] | None = None) -> pd.DataFrame:
    values = values or [1] * len(offsets_ms)
    return pd.DataFrame({"rule": rule, "entity_id": entity, "t": [T0 + o for o in offsets_ms],
                         "value": values, "event_id": [f"{entity}-{i}" for i in range(len(offsets_ms))]},
                        columns=EVENT_COLUMNS)


def flags_of(df: pd.DataFrame, close_before_ms: int | None = None) -> pd.DataFrame:
    return find_bursts(df, RULES, close_before_ms, max_evidence=200)[0]


def test_exactly_the_threshold_within_exactly_the_window_flags():
    f = flags_of(events("R1", "u1", [i * 5000 // 9 for i in range(10)]))  # 10 adds, 0..5000 ms
    assert len(f) == 1
    row = f.iloc[0]
    assert (row.rule, row.entity_type, row.entity_id, row.event_count, row.peak_value) == (
        "R1", "user", "u1", 10, 10)
    assert row.first_event_time == pd.Timestamp(T0, unit="ms")
    assert row.last_event_time == pd.Timestamp(T0 + 5000, unit="ms")
    assert row.evidence_event_ids == [f"u1-{i}" for i in range(10)]


def test_one_below_the_threshold_does_not_flag():
    assert flags_of(events("R1", "u1", [i * 500 for i in range(9)])).empty


def test_the_threshold_spread_over_a_millisecond_more_than_the_window_does_not_flag():
    assert flags_of(events("R1", "u1", [0, *[1 + i * 5000 // 9 for i in range(1, 10)]])).empty


def test_a_burst_of_thirty_gives_one_flag_with_all_thirty():
    f = flags_of(events("R1", "bot", [i * 100 for i in range(30)]))
    assert len(f) == 1
    assert (f.iloc[0].event_count, f.iloc[0].measure_value, f.iloc[0].peak_value) == (30, 30, 30)


def test_two_bursts_separated_by_more_than_the_window_give_two_flags():
    first = [i * 100 for i in range(12)]
    second = [20_000 + i * 100 for i in range(15)]
    f = flags_of(events("R1", "bot", first + second)).sort_values("first_event_time")
    assert f["event_count"].tolist() == [12, 15]
    assert f["first_event_time"].iloc[1] == pd.Timestamp(T0 + 20_000, unit="ms")


def test_an_out_of_order_burst_flags_like_an_ordered_one():
    offsets = [i * 300 for i in range(12)]
    shuffled = offsets[:]
    random.Random(3).shuffle(shuffled)
    ordered, mixed = flags_of(events("R1", "u1", offsets)), flags_of(events("R1", "u1", shuffled))
    assert len(mixed) == 1
    assert mixed.iloc[0].first_event_time == ordered.iloc[0].first_event_time
    assert mixed.iloc[0].event_count == 12


def test_quantity_rule_sums_items():
    assert flags_of(events("R2", "u1", [0, 4000, 9000], [20, 20, 9])).empty  # 49 items
    f = flags_of(events("R2", "u1", [0, 4000, 10_000], [20, 20, 10]))  # 50 items in 10 s
    assert (len(f), f.iloc[0].measure_value, f.iloc[0].measure) == (1, 50, "quantity")


def test_ip_rule_keys_by_ip():
    f = flags_of(events("R3", "172.16.0.9", [0, 2000, 4000, 6000, 8000]))
    assert (len(f), f.iloc[0].entity_type, f.iloc[0].entity_id) == (1, "ip", "172.16.0.9")


def test_entities_and_rules_do_not_mix():
    mixed = pd.concat([events("R1", "a", [0, 100, 200, 300, 400]),
                       events("R1", "b", [500, 600, 700, 800, 900]),
                       events("R3", "a", [0, 100, 200, 300, 400, 500, 600, 700, 800, 900])])
    f = flags_of(mixed)
    assert f[["rule", "entity_id"]].values.tolist() == [["R3", "a"]]


def test_a_burst_stays_open_until_the_watermark_passes_last_event_plus_window():
    df = events("R1", "u1", [i * 100 for i in range(12)])  # last event at +1100 ms
    flags, still_open = find_bursts(df, RULES, T0 + 1100 + 5000, max_evidence=200)
    assert flags.empty and len(still_open) == 12
    flags, still_open = find_bursts(df, RULES, T0 + 1100 + 5001, max_evidence=200)
    assert len(flags) == 1 and still_open.empty


def test_evidence_is_capped():
    f = find_bursts(events("R1", "bot", [i * 10 for i in range(50)]), RULES, None, max_evidence=20)[0]
    assert f.iloc[0].event_count == 50 and len(f.iloc[0].evidence_event_ids) == 20


def test_no_events_no_flags():
    flags, still_open = find_bursts(pd.DataFrame(columns=EVENT_COLUMNS), RULES, None, 10)
    assert flags.empty and still_open.empty


def test_a_rule_removed_from_config_drops_its_open_bursts_from_state():
    """State saved while R3 existed, read back by a job whose config has only R1: R3's held
    events are let go (no flag, no crash), R1's burst still closes and flags."""
    from pipelines.stateful.fraud import _encode, fraud_processor
    from pipelines.stateful.gold import Held, KeyState

    held = pd.concat([events("R3", "h", [0, 100, 200, 300, 400]),
                      events("R1", "u1", [i * 100 for i in range(12)])])
    only_r1 = FraudSettings(rules=[r for r in RULES if r.name == "R1"])
    state = KeyState(Held((_encode(held[EVENT_COLUMNS]),), T0 + 1), T0 + 60_000, timed_out=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before the fix: R3's window was NaN cast to int64
        out = list(fraud_processor(only_r1)((0,), iter([]), state))
    assert [f[["rule", "entity_id"]].values.tolist() for f in out] == [[["R1", "u1"]]]
    assert not state.exists
