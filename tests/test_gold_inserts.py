"""``apply.insert_new``: a gold table gets the rows whose key it lacks, and a table whose key
fixes a time (``Table.key_time``) is matched only from the batch's earliest time on."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from pipelines import tables as T
from pipelines.gold import apply
from pipelines.io.delta_rs import Commit, arrow_schema
from pipelines.io.ledger import Ledger

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _offers(*rows: tuple[str, float]) -> pa.Table:
    """Offers by (user, seconds after ``T0`` of the click); the id is made as the stream makes it."""
    schema = arrow_schema(T.RETARGET_OFFERS)
    clicks = [T0 + timedelta(seconds=s) for _, s in rows]
    ids = [f"{u}|c1|{_ms(c)}" for (u, _), c in zip(rows, clicks, strict=True)]
    return pa.table({
        "offer_id": ids,
        "user_id": [u for u, _ in rows], "campaign_id": ["c1"] * len(rows), "tracking_id": ["t"] * len(rows),
        "click_time": clicks, "due_time": [c + timedelta(minutes=10) for c in clicks],
        "created_at": [T0] * len(rows)}).cast(schema)


def _ms(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _ids(path: str) -> list[str]:
    return sorted(DeltaTable(path).to_pyarrow_table(columns=["offer_id"])["offer_id"].to_pylist())


def test_rows_already_stored_are_not_inserted_again_at_the_edge_of_the_time_bound(tmp_path):
    path = str(tmp_path / "retarget_offers")
    write_deltalake(path, arrow_schema(T.RETARGET_OFFERS).empty_table())
    ledger = Ledger()
    batches = [
        _offers(("u1", 0.0), ("u2", 300.0)),
        _offers(("u3", 360.0)),
        # u2 again (a backfill wrote it): the batch's earliest time is u2's own, on the bound
        _offers(("u2", 300.0), ("u4", 400.0)),
        # u1 again, with a time older than every file but the first one
        _offers(("u1", 0.0), ("u5", 500.0)),
    ]
    fresh = [apply.insert_new(Commit("test", batch, ledger), rows, path, T.RETARGET_OFFERS)
             for batch, rows in enumerate(batches)]
    # whether every row was new (then the outbox reads no ids for their notices)
    assert fresh == [True, True, False, False]
    assert not apply.insert_new(Commit("test", 1, ledger), batches[1], path, T.RETARGET_OFFERS)  # a replay
    assert _ids(path) == sorted(
        f"{u}|c1|{_ms(T0 + timedelta(seconds=s))}"
        for u, s in [("u1", 0), ("u2", 300), ("u3", 360), ("u4", 400), ("u5", 500)])


def test_the_match_bounds_the_key_time_a_second_before_the_earliest_row():
    rows = _offers(("u2", 300.0), ("u1", 0.25))
    assert apply.new_key_match(rows, T.RETARGET_OFFERS) == (
        "t.offer_id = s.offer_id AND t.click_time >= '2026-12-01T09:59:59.250000+00:00'")
    no_time = rows.set_column(4, "click_time", pa.array([None, None], rows.schema.field("click_time").type))
    assert apply.new_key_match(no_time, T.RETARGET_OFFERS) == "t.offer_id = s.offer_id"
    assert T.CART_REMINDERS.key_time == "session_start" and T.FRAUD_FLAGS.key_time == "first_event_time"
    assert T.ALERTS.key_time == "window_start"
