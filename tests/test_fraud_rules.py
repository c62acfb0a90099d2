"""Fraud bursts on hand-built event sequences (pure pandas: no Spark needed)."""

import json
import random
import warnings
from datetime import datetime

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.config import FraudRule, FraudSettings
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
    flags, still_open, carried = find_bursts(df, RULES, T0 + 1100 + 5000, max_evidence=200)
    # open; events before watermark - window (+1100) are let go into the carried summary
    assert flags.empty and still_open["t"].tolist() == [T0 + 1100]
    assert carried[["count", "total", "peak", "first_t"]].values.tolist() == [[11, 11, 12, T0]]
    flags, still_open, carried = find_bursts(df, RULES, T0 + 1100 + 5001, max_evidence=200)
    assert len(flags) == 1 and still_open.empty and carried.empty


def test_evidence_is_capped():
    f = find_bursts(events("R1", "bot", [i * 10 for i in range(50)]), RULES, None, max_evidence=20)[0]
    assert f.iloc[0].event_count == 50 and len(f.iloc[0].evidence_event_ids) == 20


def test_no_events_no_flags():
    flags, still_open, carried = find_bursts(pd.DataFrame(columns=EVENT_COLUMNS), RULES, None, 10)
    assert flags.empty and still_open.empty and carried.empty


def test_a_rule_removed_from_config_drops_its_open_bursts_from_state():
    """State saved while R3 existed, read back by a job whose config has only R1: R3's held
    events are let go (no flag, no crash), R1's burst still closes and flags."""
    from pipelines.stateful.fraud import fraud_processor
    from pipelines.stateful.gold import Held, KeyState

    held = pd.concat([events("R3", "h", [0, 100, 200, 300, 400]),
                      events("R1", "u1", [i * 100 for i in range(12)])])
    only_r1 = FraudSettings(rules=[r for r in RULES if r.name == "R1"])
    legacy = json.dumps([held[c].tolist() for c in EVENT_COLUMNS]).encode()  # the form before HELD
    state = KeyState(Held((legacy, None), T0 + 1), T0 + 60_000, timed_out=True)  # as StateFiles reads it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before the fix: R3's window was NaN cast to int64
        out = list(fraud_processor(only_r1)((0,), iter([]), state))
    assert [f[["rule", "entity_id"]].values.tolist() for f in out] == [[["R1", "u1"]]]
    assert not state.exists


def _stream(df: pd.DataFrame, cuts: list[int], watermarks: list[int], max_evidence: int = 200,
            rules: list[FraudRule] = RULES) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``df`` fed to ``find_bursts`` in slices (rows ``cuts[i-1]:cuts[i]``), each at its
    watermark, with what the call before kept and carried; then everything closed. Returns
    every flag, and what the last call kept and carried."""
    kept, carried, flags = df.iloc[:0], None, []
    for lo, hi, w in zip([0, *cuts], [*cuts, len(df)], watermarks, strict=True):
        f, kept, carried = find_bursts(pd.concat([kept, df.iloc[lo:hi]]), rules, w, max_evidence, carried)
        flags.append(f)
    f, kept, carried = find_bursts(kept, rules, None, max_evidence, carried)
    found = [x for x in [*flags, f] if len(x)]
    return (pd.concat(found, ignore_index=True) if found else f), kept, carried


def test_a_burst_that_never_pauses_is_held_as_one_window_and_flags_whole():
    """A bot adds to cart every 400 ms for 60 s (150 events; 13 in any 5 s span), fed in
    ten 6 s slices with the watermark 1 s behind: the state holds one window of its events,
    and the one flag counts the whole burst, as a single batch over all of it does."""
    df = events("R1", "bot", [i * 400 for i in range(150)])
    whole = flags_of(df)
    assert whole[["event_count", "measure_value", "peak_value"]].values.tolist() == [[150, 150, 13]]
    cuts = [15 * k for k in range(1, 10)]
    watermarks = [T0 + 6000 * k - 1000 for k in range(1, 11)]
    kept, carried = df.iloc[:0], None
    for lo, hi, w in zip([0, *cuts], [*cuts, 150], watermarks, strict=True):
        f, kept, carried = find_bursts(pd.concat([kept, df.iloc[lo:hi]]), RULES, w, 200, carried)
        assert f.empty
        assert kept["t"].min() >= w - 5000 and len(kept) <= 5000 // 400 + 1 + 15
        assert carried["count"].sum() + len(kept) == hi  # nothing lost, nothing twice
    f = find_bursts(kept, RULES, None, 200, carried)[0]
    assert f.drop(columns="evidence_event_ids").equals(whole.drop(columns="evidence_event_ids"))
    assert f.iloc[0].evidence_event_ids == [f"bot-{i}" for i in range(150)]


def test_the_peak_of_a_span_whose_events_were_let_go_is_kept():
    """Ten adds in the burst's first second (the peak, 10), then one every 4.5 s: the
    carried peak flags the burst though no kept window ever holds more than 2."""
    df = events("R1", "u1", [i * 100 for i in range(10)] + [5400 + 4500 * j for j in range(19)])
    assert flags_of(df)[["event_count", "peak_value"]].values.tolist() == [[29, 10]]
    flagged, kept, carried = _stream(df, [10, 15, 20, 25], [T0 + 2000, T0 + 27_000, T0 + 50_000,
                                                            T0 + 72_000, T0 + 100_000])
    assert flagged[["event_count", "peak_value"]].values.tolist() == [[29, 10]]
    assert flagged.iloc[0].first_event_time == pd.Timestamp(T0, unit="ms")
    assert kept.empty and carried.empty


def test_an_out_of_order_event_on_time_counts_in_a_kept_span():
    """Events every 1 s; one arrives out of order but on time (at the watermark itself),
    with the next slice: every span it falls in is still kept whole, so the peak counts it."""
    base = events("R2", "u1", [k * 1000 for k in range(30)], [5] * 30)  # 10 s holds 11 x 5 = 55
    late = events("R2", "u1", [20_500], [1]).assign(event_id="late")
    df = pd.concat([base, late], ignore_index=True)
    flagged = _stream(df, [25], [T0 + 20_000, T0 + 20_500])[0]
    assert flagged[["event_count", "measure_value", "peak_value"]].values.tolist() == [[31, 151, 56]]


def test_evidence_of_a_long_burst_is_its_first_ids_only():
    df = events("R1", "bot", [i * 100 for i in range(300)])
    flagged = _stream(df, [100, 200], [T0 + 9000, T0 + 19_000, T0 + 29_000], max_evidence=20)[0]
    assert flagged.iloc[0].evidence_event_ids == [f"bot-{i}" for i in range(20)]
    assert flagged.iloc[0].event_count == 300


def test_two_entities_and_a_closed_burst_carry_nothing_across():
    """A burst closes while another entity's stays open: only the open one carries."""
    df = pd.concat([events("R1", "a", [0, 100, 200]), events("R1", "b", [i * 1000 for i in range(20)])],
                   ignore_index=True)
    flags, kept, carried = find_bursts(df, RULES, T0 + 12_000, 200)
    assert flags.empty  # a: 3 adds, closed without a flag
    assert carried["entity_id"].tolist() == ["b"] and set(kept["entity_id"]) == {"b"}
    assert carried["count"].iloc[0] == 7 and kept["t"].min() == T0 + 7000


# Low thresholds, so that random events flag often.
DENSE = [FraudRule(name="C", event_types=["add_to_cart"], key="user", measure="count", threshold=4,
                   window="2 seconds"),
         FraudRule(name="Q", event_types=["purchase"], key="user", measure="quantity", threshold=40,
                   window="3 seconds")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["C", "Q"]), st.sampled_from(["a", "b"]),
                          st.integers(0, 20_000), st.integers(1, 15)), min_size=20, max_size=120),
       st.lists(st.integers(1, 119), min_size=2, max_size=8), st.integers(0, 2000), st.integers(0, 3000))
def test_fed_in_slices_with_any_watermarks_it_flags_as_one_batch_does(rows, cuts, delay, jitter):
    """Any events, arriving out of order by up to ``jitter`` ms, fed in slices, each slice at
    a watermark no later event is behind (less ``delay``): the same flags as one batch over
    all of them, evidence included."""
    df = pd.DataFrame([{"rule": r, "entity_id": e, "t": T0 + t, "value": v, "event_id": f"e{i:03d}"}
                       for i, (r, e, t, v) in enumerate(rows)], columns=EVENT_COLUMNS)
    arrival = df["t"] + np.random.default_rng(jitter).integers(0, jitter + 1, len(df))
    df = df.iloc[np.argsort(arrival.to_numpy(), kind="stable")].reset_index(drop=True)
    cuts = sorted({c for c in cuts if c < len(df)})
    slices = [df.iloc[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, len(df)], strict=True)]
    later = [min(s["t"].min() for s in slices[k:]) for k in range(len(slices))]  # no event behind it
    watermarks = [max(0, w - delay) for w in later]
    streamed = _stream(df, cuts, watermarks, max_evidence=7, rules=DENSE)[0]
    whole = find_bursts(df, DENSE, None, 7)[0]
    key = ["rule", "entity_id", "first_event_time"]
    assert streamed.sort_values(key).reset_index(drop=True).to_dict("records") == \
        whole.sort_values(key).reset_index(drop=True).to_dict("records")
