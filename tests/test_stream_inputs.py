"""The stream's driver-side inputs of the gold processors (``Processor.rows``, over Arrow)
equal their Spark twins (``Processor.input``, which a backfill uses), row for row, on the
sample's on-time silver events: the stream == batch parity starts here."""

from datetime import datetime

import pandas as pd
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from helpers import read
from pyspark.sql import functions as F

from pipelines import tables
from pipelines.gold.reminders import as_reminders, cart_reminders
from pipelines.gold.retarget import OFFER_DDL, as_offers, to_offer_rows
from pipelines.gold.sessions import hash_keys
from pipelines.streams.gold import gold_processors


@pytest.mark.parametrize("name", ["sessions", "fraud", "offers"])
def test_the_driver_input_equals_the_spark_input(spark, sample_lake, name):
    processor = next(p for p in gold_processors(sample_lake) if p.name == name)
    on_time = read(spark, sample_lake, "silver/events").where(~F.col("late"))
    expected = on_time.transform(processor.input).drop("bucket", "event_time")
    collected = on_time.withColumns(hash_keys()).toArrow()  # as the silver step collects them
    actual = spark.createDataFrame(processor.rows(collected))
    assert expected.count() > 100  # every processor sees a real share of the sample
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_the_driver_outputs_equal_the_spark_outputs(spark, sample_lake):
    """The rows the stream's driver makes from the processors' output (``as_reminders``,
    ``as_offers``) equal their Spark forms (``cart_reminders``, ``to_offer_rows``, which a batch
    build uses), ``created_at`` aside: reminders from the sample's closed sessions, offers from
    hand-built ones (times in epoch ms, as ``due_offers`` makes them)."""
    sessions = read(spark, sample_lake, "gold/session_funnel")
    expected = sessions.transform(cart_reminders(3))
    due = sessions.where("NOT is_open AND adds >= 3 AND purchases = 0")
    actual = spark.createDataFrame(as_reminders(due.toArrow()))
    assert expected.count() > 50
    assert_df_equality(actual.drop("created_at"), expected.transform(tables.conform(tables.CART_REMINDERS))
                       .drop("created_at"), ignore_row_order=True, ignore_nullable=True)

    made = pd.DataFrame({"offer_id": ["u1|c1|t", "u2|c1|t"], "user_id": ["u1", "u2"],
                         "campaign_id": ["c1", "c1"], "tracking_id": ["t1", None],
                         "click_time": [1_762_077_600_123, 1_762_077_601_000],
                         "due_time": [1_762_078_200_123, 1_762_078_201_000]})
    expected = spark.createDataFrame(made, OFFER_DDL).transform(to_offer_rows())
    actual = spark.createDataFrame(as_offers(pa.Table.from_pandas(made, preserve_index=False)))
    assert_df_equality(actual.drop("created_at"), expected.transform(tables.conform(tables.RETARGET_OFFERS))
                       .drop("created_at"), ignore_row_order=True, ignore_nullable=True)
    assert actual.first()["click_time"] == datetime(2025, 11, 2, 10, 0, 0, 123000)  # the ms kept
