"""The session processor against the batch function: whatever the arrival order and however
the events are cut into micro-batches, the changes it emits add up to ``sessionize`` over the
on-time events, and every session closes exactly once.

The processor runs here without Spark, under a small stand-in for ``GroupState`` that keeps
Spark's contract: the watermark is the newest event time of the batches before minus the
delay, late rows never reach the processor, and a group's timer fires once the watermark
passes it. The streaming tests run the real operator on the sample.
"""

from __future__ import annotations

from unittest import mock

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.config import load_settings
from pipelines.gold.sessions import EVENT_COLUMNS, SESSION_COLUMNS, sessionize
from pipelines.stateful import sessions as stateful_sessions
from pipelines.stateful import tiers
from pipelines.stateful.gold import stored
from pipelines.stateful.sessions import session_processor

DELAY_MS = 10 * 60_000
S = load_settings(environ={}, local=False)
GAP = S.sessions.gap


class State:
    """The part of ``GroupState`` the processors use."""

    def __init__(self, value: tuple | None, watermark: int, timed_out: bool = False):
        self.value, self.watermark, self.hasTimedOut = value, watermark, timed_out
        self.timeout: int | None = None

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple:
        return self.value

    def update(self, value: tuple) -> None:
        self.value = value

    def remove(self) -> None:
        self.value = None

    def setTimeoutTimestamp(self, ms: int) -> None:  # noqa: N802
        assert ms > self.watermark, "Spark refuses a timeout at or behind the watermark"
        self.timeout = ms

    def getCurrentWatermarkMs(self) -> int:  # noqa: N802
        return self.watermark


def run_stream(batches: list[pd.DataFrame], buckets: int = 3):
    """Feed micro-batches through the processor as Spark would; return the sessions still
    open, those closed (with how often each closed) and the on-time events."""
    process = session_processor(S)
    held: dict[int, tuple] = {}
    timers: dict[int, int] = {}
    open_rows: dict[tuple, dict] = {}
    closed: list[dict] = []
    on_time, latest = [], None
    calls = [0]

    def call(bucket: int, frames: list[pd.DataFrame], watermark: int, timed_out: bool) -> None:
        state = State(held.get(bucket), watermark, timed_out)
        for change in process((bucket,), iter(frames), state):
            for row in change.to_dict("records"):
                key = (row["tracking_id"], row["session_start"])
                if row["kind"] == "session" and row["sign"] == -1:
                    assert open_rows.pop(key)["event_count"] == row["event_count"]  # retracts what it said
                elif row["kind"] == "session":
                    open_rows[key] = row
                elif row["kind"] == "closed":
                    assert open_rows.pop(key, row)["event_count"] == row["event_count"]
                    closed.append(row)
        held.pop(bucket, None), timers.pop(bucket, None)
        if state.exists:
            kept = state.value[0]
            assert all((j[1:] >= j[:-1]).all() for j in (b.column("journey").to_numpy()
                       for b in kept.value.to_batches())), "held batches sorted by journey (key_rows)"
            calls[0] += 1  # every third call starts from the stored bytes, as after a restart
            held[bucket] = (stored(kept),) if calls[0] % 3 == 0 else state.value
            timers[bucket] = state.timeout

    for batch in [*batches, None]:
        watermark = latest - DELAY_MS if latest is not None else 0
        if batch is None:  # at the end, an hour of nothing but time passing
            watermark = (latest or 0) + 3_600_000 * 3
        live = batch[batch["t"] > watermark] if batch is not None and watermark else batch
        groups = {} if live is None else {b: [g] for b, g in live.groupby(live["journey"] % buckets)}
        for bucket, frames in groups.items():
            call(int(bucket), frames, watermark, False)
        for bucket, timeout in list(timers.items()):
            if bucket not in groups and watermark > timeout:
                call(bucket, [], watermark, True)
        if live is not None and len(live):
            on_time.append(live)
            latest = max(latest or 0, int(live["t"].max()))
    return open_rows, closed, pd.concat(on_time) if on_time else pd.DataFrame(columns=EVENT_COLUMNS)


def _key(rows) -> dict:
    return {(r["tracking_id"], r["session_start"]): {c: _plain(r[c]) for c in SESSION_COLUMNS}
            for r in rows}


def _plain(value):
    if isinstance(value, float) and value != value:
        return None
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value


event = st.fixed_dictionaries({
    "tracking_id": st.sampled_from(["ta", "tb", "tc"]),
    "minute": st.integers(0, 150),
    "second": st.integers(0, 59),
    "step": st.integers(1, 6),
    "campaign_id": st.sampled_from([None, "c1", "c2"]),
    "product_id": st.sampled_from([None, "p1", "p2"]),
    "ip_country": st.sampled_from([None, "US", "JP"]),
    "ip_hash": st.sampled_from([None, "h1", "h2"]),
})


def _frame(events: list[dict]) -> pd.DataFrame:
    rows = [{"event_id": f"e{i}", "tracking_id": e["tracking_id"],
             "t": (e["minute"] * 60 + e["second"]) * 1000, "step": e["step"],
             "user_id": "u" + e["tracking_id"], "campaign_id": e["campaign_id"],
             "product_id": e["product_id"], "price": 2.0, "quantity": 1.0, "ip_country": e.get("ip_country"),
             "ip_hash": e.get("ip_hash")}
            for i, e in enumerate(events)]
    df = pd.DataFrame(rows, columns=["event_id", *EVENT_COLUMNS])
    df["journey"] = [hash(t) % 1000 for t in df["tracking_id"]]
    df["tie"] = [hash(e) for e in df["event_id"]]
    return df.astype({"t": "int64", "step": "int8", "price": "float64", "quantity": "float64"})


@settings(max_examples=60, deadline=None)
@given(st.lists(event, min_size=1, max_size=40), st.data(), st.booleans())
def test_any_batching_adds_up_to_the_batch_result(events, data, tiny_tiers):
    """With ``tiny_tiers``, held events go cold (``stateful/tiers.py``) as soon as they are
    not yet due, and thaw only when a batch touches them or the watermark reaches
    their session's close: the same changes come out."""
    frame = _frame(events)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(frame) - 1)), max_size=6)))
    batches = [frame.iloc[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True) if b > a]
    tiny = {"RECENT_ROWS": 0, "COLD_ROWS": 1, "FREEZE_ROWS": 50}
    with mock.patch.multiple(tiers, **(tiny if tiny_tiers else {n: getattr(tiers, n) for n in tiny})), \
            mock.patch.object(stateful_sessions, "AHEAD_MS", 0 if tiny_tiers else stateful_sessions.AHEAD_MS):
        still_open, closed, on_time = run_stream(batches)
    assert still_open == {}  # the final hour of silence closed everything
    assert len(closed) == len({(r["tracking_id"], r["session_start"]) for r in closed})  # once each
    assert _key(closed) == _key(sessionize(on_time, GAP).to_dict("records"))


def test_a_late_event_that_bridges_two_sessions_merges_them():
    # Two sessions of one journey 35 minutes apart (the gap is 30); then an event at minute 26,
    # on time (the watermark is 35 - 10 = 25), joins them into one.
    first = _frame([{"tracking_id": "ta", "minute": 0, "second": 0, "step": 1, "campaign_id": "c1",
                     "product_id": None},
                    {"tracking_id": "ta", "minute": 35, "second": 0, "step": 3, "campaign_id": None,
                     "product_id": None}])
    bridge = _frame([{"tracking_id": "ta", "minute": 26, "second": 0, "step": 2, "campaign_id": "c1",
                      "product_id": None}]).assign(event_id="e9")
    still_open, closed, _ = run_stream([first, bridge])
    [session] = closed
    assert (session["event_count"], session["funnel_level"], session["session_end"]) == (3, 3, 35 * 60_000)


def test_a_reminder_goes_out_when_the_watermark_reaches_session_end_plus_gap():
    adds = [{"tracking_id": "ta", "minute": m, "second": 0, "step": 4, "campaign_id": None,
             "product_id": p} for m, p in ((1, "p2"), (3, "p1"), (5, "p2"))]
    frame = _frame(adds)
    process = session_processor(S)
    state = State(None, 0)
    list(process((0,), iter([frame]), state))
    closes = (5 + 30) * 60_000  # session_end + gap
    assert state.timeout == closes - 1  # Spark fires a timer once the watermark passes it

    early = State(state.value, closes - 1, timed_out=True)
    assert [f for f in process((0,), iter([]), early) if "reminder" in set(f["kind"])] == []
    assert early.exists  # still held: an on-time purchase could yet cancel it

    due = State(state.value, closes, timed_out=True)
    out = pd.concat(list(process((0,), iter([]), due)))
    [reminder] = out[out["kind"] == "reminder"].to_dict("records")
    assert (reminder["adds"], list(reminder["added_products"])) == (3, ["p1", "p2"])
    assert not due.exists  # closed sessions leave the state


def test_the_open_journeys_are_read_from_the_held_events():
    import pyarrow as pa

    from pipelines.stateful.sessions import HELD, open_journeys

    rows = {"tracking_id": ["a", "a", "a", "b"], "t": [1_000, 3_000, 9_000_000, 5_000]}
    held = pa.table({name: rows.get(name, [None] * 4) for name in HELD.names}, schema=HELD)
    assert sorted(open_journeys(held).to_pylist()) == ["a", "b"]
    assert open_journeys(HELD.empty_table()).to_pylist() == []
