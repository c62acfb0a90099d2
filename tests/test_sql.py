"""``funnelhouse sql``: DuckDB over the lake's Delta tables (through delta-rs) gives the numbers
Spark gives over the same tables, in each output format."""

import csv
import io
import json

import pytest
from helpers import SAMPLE, assert_same_rows
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.lake_sql import table_paths

TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())
runner = CliRunner()

# (DuckDB over the views, Spark SQL over temp views of the same names)
QUERIES = [
    ("SELECT campaign_id, CAST(sum(clicks) AS BIGINT) AS clicks, CAST(sum(purchases) AS BIGINT) "
     "AS purchases, sum(revenue) AS revenue FROM gold_session_funnel GROUP BY campaign_id",
     "SELECT campaign_id, sum(clicks) AS clicks, sum(purchases) AS purchases, sum(revenue) AS revenue "
     "FROM gold_session_funnel GROUP BY campaign_id"),
    ("SELECT product_id, count(*) AS n, sum(price * quantity) AS sold FROM silver_events "
     "WHERE event_type = 'purchase' AND user_id LIKE 'u%' GROUP BY product_id",
     "SELECT product_id, count(*) AS n, sum(price * quantity) AS sold FROM silver_events "
     "WHERE event_type = 'purchase' AND user_id LIKE 'u%' GROUP BY product_id"),
    ("SELECT reason, count(*) AS n FROM silver_quarantine GROUP BY reason",
     "SELECT reason, count(*) AS n FROM silver_quarantine GROUP BY reason"),
]


def _sql(lake, query: str, fmt: str) -> str:
    result = runner.invoke(app, ["sql", query, "--lake", str(lake), "--format", fmt], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("duck", "spark_sql"), QUERIES)
def test_sql_gives_the_numbers_spark_gives(spark, sample_lake, duck, spark_sql):
    for name, path in table_paths(sample_lake.lake).items():
        spark.read.format("delta").load(str(path)).createOrReplaceTempView(name)
    expected = spark.sql(spark_sql)
    rows = json.loads(_sql(sample_lake.lake, duck, "json"))
    assert rows, "no rows"
    actual = spark.createDataFrame([tuple(r.values()) for r in rows], expected.schema)
    assert_same_rows(actual, expected, precision=1e-9)


def test_sql_prints_csv_and_a_table(sample_lake):
    query = "SELECT reason, count(*) AS n FROM silver_quarantine GROUP BY reason ORDER BY reason"
    answer = csv.DictReader(io.StringIO(_sql(sample_lake.lake, query, "csv")))
    got = {r["reason"]: int(r["n"]) for r in answer}
    assert got == TRUTH["malformed_by_reason"]
    shown = _sql(sample_lake.lake, query, "table")
    assert f"{len(got)} rows" in shown and all(reason in shown for reason in got)


def test_sql_names_an_unknown_table_and_exits_1(sample_lake):
    result = runner.invoke(app, ["sql", "SELECT * FROM gold_nope", "--lake", str(sample_lake.lake)])
    assert result.exit_code == 1
    assert "gold_nope" in result.output


def test_every_table_is_a_view_named_layer_table(sample_lake):
    names = set(table_paths(sample_lake.lake))
    assert {"bronze_events", "silver_events", "silver_quarantine", "gold_session_funnel",
            "gold_campaign_performance", "gold_alerts", "gold_fraud_flags"} <= names
    assert not any(n.startswith("_") for n in names)
