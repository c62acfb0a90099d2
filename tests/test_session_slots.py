"""gold/session_funnel's open slots: the stream's session MERGE on a real Delta table, over
hand-built changes. A session's stored row is found in the slot of its stored end and moves to
the slot of its new one; a slot no change names is not rewritten."""

from datetime import datetime, timedelta

import pandas as pd
import pyarrow as pa
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake

from pipelines import tables as T
from pipelines.gold import apply
from pipelines.gold.sessions import typed_session_rows
from pipelines.io.delta_rs import Commit, arrow_schema
from pipelines.io.ledger import Ledger

T0 = datetime(2026, 11, 2, 10, 0, 0)  # a slot boundary: epoch seconds divisible by 10
S0 = int(pd.Timestamp(T0, tz="UTC").timestamp())
DAY = T0.date()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _ms(seconds: float) -> int:
    return int((S0 + seconds) * 1000)


def change(tid: str, start: float, end: float, kind: str = "session", sign: int = 1,
           purchases: int = 0) -> dict:
    """One change row as the session processor emits it (times in seconds after ``T0``)."""
    return {"kind": kind, "sign": sign, "is_open": kind == "session", "tracking_id": tid,
            "session_start": _ms(start), "session_end": _ms(end), "user_id": "u", "campaign_id": None,
            "funnel_level": 1, "event_count": 1, "clicks": 0, "adds": 0, "purchases": purchases,
            "items": 0, "revenue": 0.0, "added_products": [], "purchased_products": [], "countries": [],
            "ip_hashes": [], **{c: None for c in T.SESSION_FUNNEL.columns if c.startswith("seconds_to_")}}


def merge(path: str, batch: int, rows: list[dict]) -> dict:
    """Apply one batch's changes the way the gold step does; the commit's metrics."""
    typed = typed_session_rows(pd.DataFrame(rows))
    schema = arrow_schema(T.SESSION_FUNNEL)
    columns = [*T.SESSION_FUNNEL.columns, "kind", "sign"]
    changes = pa.Table.from_pandas(typed[columns], preserve_index=False, schema=pa.schema(
        [*schema, pa.field("kind", pa.string()), pa.field("sign", pa.int32())]))
    apply.sessions(Commit("test", batch, Ledger()), changes, path)
    return DeltaTable(path).history(1)[0]["operationMetrics"]


def files_by_slot(path: str) -> dict:
    adds = pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pylist()
    return {(a["partition.is_open"], a["partition.open_slot"]): a["path"] for a in adds}


def test_sessions_move_between_slots_and_untouched_slots_keep_their_files(spark, tmp_path):
    path = str(tmp_path / "session_funnel")
    write_deltalake(path, arrow_schema(T.SESSION_FUNNEL).empty_table(),
                    partition_by=list(T.SESSION_FUNNEL.partition_by))
    merge(path, 0, [change("a", 0, 3), change("b", 11, 15), change("c", 21, 25), change("e", 60, 64)])
    before = files_by_slot(path)
    assert set(before) == {(True, S0), (True, S0 + 10), (True, S0 + 20), (True, S0 + 60)}

    metrics = merge(path, 1, [
        change("a", 0, 3, sign=-1), change("a", 0, 12),  # grew: slot S0 -> S0 + 10
        change("b", 11, 15, kind="closed"),               # closed unchanged
        change("c", 21, 25, sign=-1),                     # merged into another session
        change("d", 30, 37, purchases=1),                 # new
    ])

    got = spark.read.format("delta").load(path).select(
        "session_id", "session_end", "is_open", "open_slot", "session_date")
    expected = spark.createDataFrame([
        (f"a@{_ms(0)}", at(12), True, S0 + 10, DAY),
        (f"b@{_ms(11)}", at(15), False, None, DAY),
        (f"d@{_ms(30)}", at(37), True, S0 + 30, DAY),
        (f"e@{_ms(60)}", at(64), True, S0 + 60, DAY),
    ], "session_id string, session_end timestamp, is_open boolean, open_slot long, session_date date")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    after = files_by_slot(path)
    assert after[(True, S0 + 60)] == before[(True, S0 + 60)]  # no change named e's slot
    assert metrics["num_target_rows_deleted"] == 3 and metrics["num_target_rows_inserted"] == 3
    assert metrics["num_target_rows_copied"] == 0  # each touched slot held only changed sessions

