"""gold/user_profile and gold/ip_profile on hand-built sessions and flags: the stream's pandas
deltas, appended in two batches to real Delta tables and folded by each reader (Arrow, Spark,
DuckDB) or by ``funnelhouse maintain``, equal the batch build's rows, and both equal the
hand-written profiles."""

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import DataFrame

from pipelines import tables as T
from pipelines.gold import apply
from pipelines.gold.build import ip_profile_rows, profile_rows
from pipelines.gold.profiles import ip_deltas, profile_deltas
from pipelines.io.delta_rs import Commit, arrow_schema, read
from pipelines.io.folds import fold_arrow, fold_spark
from pipelines.io.ledger import Ledger
from pipelines.jobs.maintain import fold_table
from pipelines.lake_sql import connect
from pipelines.report import rows_label


def _t(minute: int) -> datetime:
    return datetime(2026, 11, 2, 10, minute)


SESSIONS = [  # user, start, end, purchases, revenue, countries, ip_hashes, is_open
    ("u1", _t(0), _t(5), 1, 20.0, ["US"], ["h1"], False),
    ("u1", _t(40), _t(42), 0, 0.0, ["JP", "US"], ["h1", "h2"], False),
    ("u2", _t(10), _t(11), 2, 7.5, [], [], False),
    ("u2", _t(50), _t(55), 1, 99.0, ["DE"], ["h1"], True),  # still open: not in the profiles yet
]
FLAGS = [("f1", "R1", "user", "u1"), ("f2", "R3", "ip", "172.16.0.1"), ("f3", "R2", "user", "u3")]
EXPECTED = [  # user_id, first_seen, last_seen, sessions, purchases, revenue, fraud_flags, countries,
    # first_session_end
    ("u1", _t(0), _t(42), 2, 1, 20.0, 1, ["JP", "US"], _t(5)),
    ("u2", _t(10), _t(11), 1, 2, 7.5, 0, [], _t(11)),
    ("u3", None, None, 0, 0, 0.0, 1, [], None),  # flagged, no closed session yet
]
EXPECTED_IPS = [  # ip_hash, first_seen, last_seen, sessions, users
    ("h1", _t(0), _t(42), 2, ["u1"]),
    ("h2", _t(40), _t(42), 1, ["u1"]),
]


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


def _sessions() -> pd.DataFrame:
    return pd.DataFrame(SESSIONS, columns=["user_id", "session_start", "session_end", "purchases",
                                           "revenue", "countries", "ip_hashes", "is_open"])


def _flags() -> pd.DataFrame:
    return pd.DataFrame(FLAGS, columns=["flag_id", "rule", "entity_type", "entity_id"])


def test_batch_build_gives_the_hand_written_profile(spark):
    sessions = spark.createDataFrame(_sessions())
    flags = spark.createDataFrame(_flags())
    got = sessions.transform(profile_rows(flags))
    expected = spark.createDataFrame(EXPECTED, T.USER_PROFILE.schema)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    by_ip = sessions.transform(ip_profile_rows)
    assert_df_equality(by_ip, spark.createDataFrame(EXPECTED_IPS, T.IP_PROFILE.schema),
                       ignore_row_order=True, ignore_nullable=True)


def test_a_batch_that_closes_nothing_and_flags_only_an_address_changes_no_profile():
    no_sessions = _sessions().iloc[0:0]
    assert profile_deltas(no_sessions, _flags()[_flags()["entity_type"] == "ip"]).num_rows == 0
    assert profile_deltas(no_sessions, None).num_rows == 0
    flagged = profile_deltas(no_sessions, _flags())  # user flags alone: rows of their own
    assert flagged.select(["user_id", "fraud_flags"]).to_pylist() == [
        {"user_id": "u1", "fraud_flags": 1}, {"user_id": "u3", "fraud_flags": 1}]


def test_one_batchs_deltas_are_the_hand_written_rows_sorted_with_sorted_lists():
    """A user or address first seen in a batch is inserted as its delta is, lists included."""
    closed = _sessions()[~_sessions()["is_open"]]
    users = [(u, _utc(first), _utc(last), *counts, _utc(end)) for u, first, last, *counts, end in EXPECTED]
    assert [tuple(r.values()) for r in profile_deltas(closed, _flags()).to_pylist()] == users
    ips = [(h, _utc(first), _utc(last), *rest) for h, first, last, *rest in EXPECTED_IPS]
    assert [tuple(r.values()) for r in ip_deltas(closed).to_pylist()] == ips
    both = closed.assign(countries=[["US", "DE", None, "DE"], ["JP"], []],
                         ip_hashes=[["h2", "h1"], ["h2"], ["h3"]], user_id=["u9", "u1", None])
    assert profile_deltas(both, None).select(["user_id", "countries"]).to_pylist() == [
        {"user_id": "u1", "countries": ["JP"]}, {"user_id": "u9", "countries": ["DE", "US"]}]
    assert ip_deltas(both).select(["ip_hash", "sessions", "users"]).to_pylist() == [
        {"ip_hash": "h1", "sessions": 1, "users": ["u9"]},
        {"ip_hash": "h2", "sessions": 2, "users": ["u1", "u9"]},
        {"ip_hash": "h3", "sessions": 1, "users": []}]  # a session without a user names none


def _streamed(lake) -> tuple[str, str]:
    """The profile tables of ``lake`` after two gold batches' appends. Batch 0 closes u1's
    first session and u2's; batch 1 closes u1's second and raises the flags."""
    path, ip_path = str(lake / "gold" / "user_profile"), str(lake / "gold" / "ip_profile")
    write_deltalake(path, arrow_schema(T.USER_PROFILE).empty_table())
    write_deltalake(ip_path, arrow_schema(T.IP_PROFILE).empty_table())
    closed = _sessions()[~_sessions()["is_open"]]
    ledger = Ledger()
    for batch, (rows, flags) in enumerate([(closed.iloc[[0, 2]], None), (closed.iloc[[1]], _flags())]):
        apply.user_profiles(Commit("test", batch, ledger), profile_deltas(rows, flags), path)
        apply.ip_profiles(Commit("test", batch, ledger), ip_deltas(rows), ip_path)
    return path, ip_path


def _assert_profiles(spark, users, ips) -> None:
    """``users`` and ``ips`` (Spark DataFrames, Arrow or pandas) are the hand-written profiles."""
    def frame(rows, table):
        return rows if isinstance(rows, DataFrame) else spark.createDataFrame(
            rows.to_pandas() if isinstance(rows, pa.Table) else rows, table.schema)
    assert_df_equality(frame(users, T.USER_PROFILE), spark.createDataFrame(EXPECTED, T.USER_PROFILE.schema),
                       ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(frame(ips, T.IP_PROFILE), spark.createDataFrame(EXPECTED_IPS, T.IP_PROFILE.schema),
                       ignore_row_order=True, ignore_nullable=True)


def test_stream_appends_a_row_per_batch_and_every_reader_folds_them_to_the_profiles(spark, tmp_path):
    path, ip_path = _streamed(tmp_path)
    # u1 and h1 have a row from each batch; nothing was rewritten
    assert sorted(read(path)["user_id"].to_pylist()) == ["u1", "u1", "u2", "u3"]
    assert sorted(read(ip_path)["ip_hash"].to_pylist()) == ["h1", "h1", "h2"]
    _assert_profiles(spark, fold_arrow(read(path), T.USER_PROFILE), fold_arrow(read(ip_path), T.IP_PROFILE))
    _assert_profiles(spark, spark.read.format("delta").load(path).transform(fold_spark(T.USER_PROFILE)),
                     spark.read.format("delta").load(ip_path).transform(fold_spark(T.IP_PROFILE)))
    con = connect(tmp_path)  # funnelhouse sql and the dashboard
    _assert_profiles(spark, con.sql("SELECT * FROM gold_user_profile").df(),
                     con.sql("SELECT * FROM gold_ip_profile").df())


def test_maintain_folds_each_key_into_one_row_and_a_second_run_folds_nothing(spark, tmp_path):
    path, ip_path = _streamed(tmp_path)
    assert rows_label(T.USER_PROFILE, path) == "3 (4 stored)"  # funnelhouse summary: users, rows
    assert fold_table(path, T.USER_PROFILE) == 1 and fold_table(ip_path, T.IP_PROFILE) == 1
    assert rows_label(T.USER_PROFILE, path) == "3"
    _assert_profiles(spark, read(path), read(ip_path))  # one stored row per key, as a batch build writes
    version = DeltaTable(path).version()
    assert fold_table(path, T.USER_PROFILE) == 0 and DeltaTable(path).version() == version
