"""The offers processor's state across micro-batches, driven by ``stateful/gold.advance`` as
the stream drives it (pure pandas and Arrow; the rule itself: tests/test_retarget.py)."""

import pandas as pd
from helpers import is_delta

from pipelines.config import RetargetSettings
from pipelines.stateful.gold import Held, advance, kept, read_ipc
from pipelines.stateful.offers import processor
from pipelines.stateful.state_files import StateFiles

MIN = 60_000
T0 = 1_793_000_000_000
DELAY = MIN  # the watermark: the newest event time seen, less a minute


def ev(kind: str, minute: float, user: str, campaign: str | None = None) -> dict:
    return {"event_type": kind, "user_id": user, "campaign_id": campaign,
            "tracking_id": f"{user}-{minute}", "t": T0 + int(minute * MIN)}


EVENTS = pd.DataFrame([
    ev("ad_click", 0, "plain", "c1"),  # nothing else: an offer
    ev("ad_click", 0, "buyer", "c1"), ev("purchase", 9, "buyer"),  # bought in time: none
    ev("ad_click", 1, "late-buyer", "c1"), ev("purchase", 11.5, "late-buyer"),  # after the wait: offer
    ev("ad_click", 2, "again", "c1"), ev("ad_click", 14, "again", "c1"),  # the second within the cooldown
    ev("ad_click", 3, "again", "c2"),  # another campaign: its own offer
    ev("purchase", 2, "before"), ev("ad_click", 4, "before", "c1"),  # a purchase before the click: offer
])
EXPECTED = [("again", "c1", 2), ("again", "c2", 3), ("before", "c1", 4), ("late-buyer", "c1", 1),
            ("plain", "c1", 0)]


def _rows(value) -> list[tuple]:
    table = kept(value, read_ipc)  # stored, kept, or read back after a start (Replayed): whole
    return sorted(tuple(r.values()) for r in table.to_pylist())


def _run(slice_minutes: float, files: StateFiles | None = None, restart: bool = True,
         settings: RetargetSettings | None = None) -> tuple[list[tuple], Held]:
    """The events in arrival slices, each batch's watermark the newest time less DELAY; then
    quiet batches an hour apart, which only move the watermark. Returns the offers as (user,
    campaign, click minute), and the state after."""
    p = processor(settings or RetargetSettings())
    held, latest, offers = Held(), 0, []
    slot = (EVENTS["t"] - T0) // int(slice_minutes * MIN)
    batches = [(EVENTS[slot == n], 0) for n in range(int(slot.max()) + 1)] + [(EVENTS.iloc[:0], 60 * MIN)] * 2
    for batch_id, (rows, quiet) in enumerate(batches):
        if files is not None and batch_id and restart:
            held = files.load(batch_id)[0].get("offers", Held())  # a restart before every batch
        newest = int(rows["t"].max()) if len(rows) else latest + quiet
        before, latest = max(latest - DELAY, 0), max(latest, newest)
        out, held = advance(p, rows, held, before, latest - DELAY)
        offers += [(r.user_id, r.campaign_id, (r.click_time - T0) // MIN)
                   for f in out for r in f.itertuples()]
        if files is not None:
            files.save(batch_id, {"offers": held}, latest)
            if not restart:  # the file (most hold only the keys that changed) reads back the state
                stored = files.load(batch_id + 1)[0].get("offers", Held())
                assert [_rows(v) for v in stored.values or ()] == [_rows(v) for v in held.values or ()]
    return sorted(offers), held


def test_each_offer_once_whatever_the_batching(spark):  # the processor's schema parses with Spark
    for minutes in (0.5, 3, 7, 60):
        offers, held = _run(minutes)
        assert offers == EXPECTED, minutes
        pending, purchases, sent = (v.value for v in held.values)
        assert pending.num_rows == purchases.num_rows == 0  # an hour later: nothing left to decide
        assert sorted(sent["user_id"].to_pylist()) == ["again", "again", "before", "late-buyer", "plain"]


def test_a_restart_before_every_batch_gives_the_same_offers(spark, tmp_path):  # schemas parse with Spark
    files = StateFiles(tmp_path / "gold", [processor(RetargetSettings())])
    assert _run(3, files)[0] == EXPECTED


def test_the_state_files_store_what_changed_and_read_back_the_whole_state(spark, tmp_path):
    """Every batch's file holds only the keys it changed, yet reads back the state as kept.
    A one-minute cooldown: offers made leave the state while clicks are still pending (and
    "again" gets a second offer for c1)."""
    short = RetargetSettings(cooldown="1 minute")
    for minutes in (0.5, 3):
        files = StateFiles(tmp_path / f"gold-{minutes}", [processor(short)])
        offers, held = _run(minutes, files, restart=False, settings=short)
        assert offers == sorted([*EXPECTED, ("again", "c1", 14)]) and held.values is None
        assert [is_delta(files, i) for i in range(1, 4)] == [True] * 3, minutes

