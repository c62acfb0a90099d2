"""The backfill job: rebuild [from, to] day by day with the stream's own transforms.

Started by ``funnelhouse backfill`` (``spark-submit ... pipelines/cli.py backfill ...``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from pyspark.sql import SparkSession
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines import tables as T
from pipelines.backfill import LAYERS, SOURCES, Changes, Checks, days
from pipelines.config import Settings
from pipelines.report import print_backfill


def run_backfill(spark: SparkSession, s: Settings, start: date, end: date, layers: list[str],
                 console: Console | None = None, source: str = "bronze",
                 model_version: int | None = None) -> dict[str, Changes]:
    """Backfill each day of [start, end] through ``layers`` in order, silver from ``source``
    (``bronze`` or ``landing-archive``), anomaly scores with ``model_version`` (default: the
    champion); return the totals per table (rows read, written, added, removed)."""
    unknown = set(layers) - set(LAYERS)
    if unknown or not layers:
        raise ValueError(f"unknown layers {sorted(unknown)}; choose from {list(LAYERS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {list(SOURCES)}")
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    console = console or Console()
    totals: dict[str, Changes] = defaultdict(lambda: Changes("", 0, 0, 0, 0))
    checks = Checks.of(spark, s)  # the stream's quality suites, one GX context for the run
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("backfill", total=len(days(start, end)))
        for day in days(start, end):
            progress.update(task, description=f"backfill {day}")
            for layer in layers:
                for c in LAYERS[layer](spark, s, day, day, source, checks, model_version):
                    t = totals[c.table]
                    totals[c.table] = Changes(c.table, t.read + c.read, t.written + c.written,
                                              t.added + c.added, t.removed + c.removed)
            progress.advance(task)
    if checks is not None and checks.quarantined:
        name = T.SILVER_QUARANTINE.name
        totals[name] = Changes(name, 0, checks.quarantined, checks.quarantined, 0)
    print_backfill(console, dict(totals), start, end)
    return dict(totals)
