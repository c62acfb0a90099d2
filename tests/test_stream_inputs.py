"""The stream's driver-side inputs of the gold processors (``Processor.rows``, over Arrow)
equal their Spark twins (``Processor.input``, which a backfill uses), row for row, on the
sample's on-time silver events: the stream == batch parity starts here."""

import pytest
from chispa import assert_df_equality
from helpers import read
from pyspark.sql import functions as F

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
