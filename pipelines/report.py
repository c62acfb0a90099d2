"""Terminal summaries of the lake, for ``make demo`` and operators."""

from __future__ import annotations

from datetime import date

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window
from rich.console import Console
from rich.table import Table as RichTable

from pipelines import tables
from pipelines.config import Settings
from pipelines.contract import STEPS


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
    if _exists(spark, s.table(tables.CAMPAIGN_FUNNEL.name)):
        print_report(spark, s, console)
    if _exists(spark, s.table(tables.FRAUD_FLAGS.name)):
        print_fraud(spark, s, console)


def print_fraud(spark: SparkSession, s: Settings, console: Console, limit: int = 15) -> None:
    """The latest fraud flags, one line per flagged burst."""
    flags = (spark.read.format("delta").load(s.table(tables.FRAUD_FLAGS.name))
             .orderBy(F.desc("last_event_time")).limit(limit).collect())
    table = RichTable(title=f"Fraud flags (latest {limit})")
    for col in ("rule", "entity", "first event", "span s", "events", "measure", "threshold"):
        table.add_column(col, justify="right" if col in ("span s", "events", "measure", "threshold")
                         else "left")
    for f in flags:
        span = (f["last_event_time"] - f["first_event_time"]).total_seconds()
        table.add_row(f["rule"], f"{f['entity_type']} {f['entity_id']}", str(f["first_event_time"]),
                      f"{span:.1f}", str(f["event_count"]), f"{f['measure_value']} ({f['measure']})",
                      str(f["threshold"]))
    console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def funnel_by_campaign(spark: SparkSession, s: Settings) -> list:
    """Campaign funnel summed over windows, with step conversions and the biggest drop-off."""
    funnel = spark.read.format("delta").load(s.table(tables.CAMPAIGN_FUNNEL.name))
    sums = [F.sum(f"reached_{step}").alias(step) for step in STEPS]
    return funnel.groupBy("campaign_id").agg(*sums).orderBy("campaign_id").collect()


SHORT = {"ad_impression": "impr", "ad_click": "click", "landing_page_view": "land",
         "add_to_cart": "cart", "checkout_start": "checkout", "purchase": "buy"}


def print_report(spark: SparkSession, s: Settings, console: Console) -> None:
    """The funnel per campaign, the drop-off alerts and the budget recommendation."""
    if not _exists(spark, s.table(tables.CAMPAIGN_FUNNEL.name)):
        console.print("no gold tables yet: run `funnelhouse run` first")
        return
    alerts = spark.read.format("delta").load(s.table(tables.ALERTS.name)).collect()
    alerted = {a["campaign_id"] for a in alerts}
    funnel = RichTable(title="Funnel per campaign: sessions reaching each step "
                             "(conversion from the step before); ! = alerted")
    funnel.add_column("campaign")
    for step in STEPS:
        funnel.add_column(SHORT[step], justify="right")
    funnel.add_column("biggest drop-off")
    for row in funnel_by_campaign(spark, s):
        counts = [row[step] or 0 for step in STEPS]
        conv = [None] + [c / p if p else None for p, c in zip(counts, counts[1:], strict=False)]
        cells = [f"{counts[0]:,}"] + [f"{c:,} {_pct(r)}" for c, r in zip(counts[1:], conv[1:],
                                                                       strict=False)]
        known = [(r, i) for i, r in enumerate(conv) if r is not None]
        worst = min(known) if known else None
        drop = (f"{SHORT[STEPS[worst[1] - 1]]}->{SHORT[STEPS[worst[1]]]} {_pct(worst[0])}"
                if worst else "-")
        name = f"[red]{row['campaign_id']}![/red]" if row["campaign_id"] in alerted else row["campaign_id"]
        funnel.add_row(name, *cells, drop)
    console.print(funnel)

    if alerts:
        table = RichTable(title="Drop-off alerts")
        for col in ("rule", "campaign", "window start", "value", "threshold", "volume"):
            table.add_column(col)
        for a in sorted(alerts, key=lambda a: (a["campaign_id"], a["window_start"], a["rule"])):
            table.add_row(a["rule"], a["campaign_id"], str(a["window_start"]), _pct(a["value"]),
                          _pct(a["threshold"]), f"{a['volume']:,}")
        console.print(table)

    perf = (spark.read.format("delta").load(s.table(tables.CAMPAIGN_PERFORMANCE.name))
            .orderBy(F.desc("budget_change")).collect())
    budget = RichTable(title="Campaign performance and budget recommendation")
    for col in ("campaign", "clicks", "purchases", "conversion", "revenue", "budget now",
                "recommended", "change"):
        budget.add_column(col, justify="left" if col == "campaign" else "right")
    for p in perf:
        change = p["budget_change"] or 0.0
        arrow = "[green]▲" if change > 0.001 else "[red]▼" if change < -0.001 else " "
        budget.add_row(p["campaign_id"], f"{p['clicks']:,}", f"{p['purchases']:,}",
                       _pct(p["purchase_conversion"]), f"{p['revenue']:,.2f}",
                       _pct(p["current_budget_share"]), _pct(p["recommended_budget_share"]),
                       f"{arrow} {change:+.1%}")
    console.print(budget)
    if perf:
        console.print(f"budget rule: {perf[0]['budget_rule']}; 'budget now' is taken as the click share")


def print_quality(spark: SparkSession, s: Settings, console: Console, last: int = 5) -> None:
    """One row per (suite, batch, expectation) for the ``last`` batches of each suite, newest
    first. Batches are ordered by validation time: batch ids restart with a new checkpoint, and
    a backfill's are days (``yyyymmdd``)."""
    path = s.table(tables.QUALITY_RESULTS.name)
    if not DeltaTable.isDeltaTable(spark, path):
        console.print("no quality results yet (run the pipeline first)")
        return
    results = spark.read.format("delta").load(path)
    batch = ["suite", "query", "batch_id"]
    recent = (results.groupBy(*batch).agg(F.max("validated_at").alias("_at"))
              .withColumn("rank", F.row_number().over(
                  Window.partitionBy("suite").orderBy(F.col("_at").desc())))
              .where(F.col("rank") <= last).drop("rank"))
    rows = (results.join(recent, batch)
            .orderBy("suite", F.col("_at").desc(), "query", "batch_id", "expectation").collect())
    table = RichTable(title=f"Quality: last {last} batches per suite")
    for col in ("suite", "query", "batch", "expectation", "policy", "ok", "unexpected", "rows", "at"):
        table.add_column(col, justify="right" if col in ("batch", "unexpected", "rows") else "left")
    for r in rows:
        ok = "[green]yes[/green]" if r["success"] else "[red]NO[/red]"
        table.add_row(r["suite"], r["query"], str(r["batch_id"]), r["expectation"], r["policy"], ok,
                      f"{r['unexpected_count']:,}",
                      f"{r['element_count']:,}",
                      r["validated_at"].strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


def print_backfill(console: Console, totals: dict, start: date, end: date) -> None:
    """Rows read, written, added, removed and changed per table by a backfill."""
    table = RichTable(title=f"Backfill {start} .. {end}")
    for col in ("table", "rows read", "rows written", "added", "removed", "changed"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for c in totals.values():
        table.add_row(c.table, f"{c.read:,}", f"{c.written:,}", f"{c.added:,}", f"{c.removed:,}",
                      f"{c.changed:,}")
    console.print(table)
