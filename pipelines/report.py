"""Terminal summaries of the lake, for ``make demo`` and operators."""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table as RichTable

from pipelines import tables
from pipelines.config import Settings


def _exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def print_summary(spark: SparkSession, s: Settings, console: Console) -> None:
    """Rows per table, quarantine by reason, and late events."""
    counts = RichTable(title="Rows per table", show_lines=False)
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    for t in tables.ALL:
        path = s.table(t.name)
        if _exists(spark, path):
            counts.add_row(t.name, f"{spark.read.format('delta').load(path).count():,}")
    console.print(counts)

    quarantine = s.table(tables.SILVER_QUARANTINE.name)
    if _exists(spark, quarantine):
        by_reason = RichTable(title="Quarantine by reason")
        by_reason.add_column("reason")
        by_reason.add_column("rows", justify="right")
        rows = (spark.read.format("delta").load(quarantine).groupBy("reason").count()
                .orderBy(F.desc("count"), "reason").collect())
        for r in rows:
            by_reason.add_row(r["reason"], f"{r['count']:,}")
        console.print(by_reason)

    events = s.table(tables.SILVER_EVENTS.name)
    if _exists(spark, events):
        late = spark.read.format("delta").load(events).where("late").count()
        console.print(f"silver events behind the watermark (kept in silver, skipped by gold "
                      f"streams): {late:,}")
