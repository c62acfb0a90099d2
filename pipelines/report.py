"""Terminal summaries of the lake, for ``make demo`` and operators.

They read the Delta tables with delta-rs and aggregate with DuckDB: no JVM, so a summary
takes about a second rather than the 15 s a Spark session needs before its first row.
"""

from __future__ import annotations

from datetime import date

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from rich.console import Console
from rich.table import Table as RichTable

from pipelines import tables
from pipelines.config import Settings
from pipelines.io.delta_rs import read, row_count
from pipelines.io.ledger import rs_uri
from pipelines.steps import STEPS


def _load(s: Settings, table: tables.Table) -> pa.Table | None:
    """The table as Arrow, or None when it does not exist yet."""
    path = rs_uri(s.table(table.name))
    if not DeltaTable.is_deltatable(path):
        return None
    return DeltaTable(path).to_pyarrow_table()


def _rows(sql: str, **relations: pa.Table) -> list[dict]:
    """Run ``sql`` in DuckDB over the named Arrow tables; rows as dicts."""
    con = duckdb.connect()
    for name, data in relations.items():
        con.register(name, data)
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def rows_label(t: tables.Table, path: str) -> str:
    """A table's rows; for a table whose rows add up (the profiles), its keys, and the rows it
    stores until ``funnelhouse maintain`` folds them."""
    stored = row_count(path)
    if not t.fold:
        return f"{stored:,}"
    (key,) = t.key
    keys = pc.count_distinct(read(path, columns=[key])[key]).as_py()
    return f"{keys:,}" + (f" ({stored:,} stored)" if stored != keys else "")


def print_summary(s: Settings, console: Console) -> None:
    """Rows per table, quarantine by reason, late events, then the report and fraud flags."""
    counts = RichTable(title="Rows per table", show_lines=False)
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    for t in tables.ALL:
        path = rs_uri(s.table(t.name))
        if DeltaTable.is_deltatable(path):
            counts.add_row(t.name, rows_label(t, path))
    console.print(counts)
    print_conservation(s, console)

    quarantine = _load(s, tables.SILVER_QUARANTINE)
    if quarantine is not None:
        by_reason = RichTable(title="Quarantine by reason")
        by_reason.add_column("reason")
        by_reason.add_column("rows", justify="right")
        for r in _rows("SELECT reason, count(*) AS n FROM q GROUP BY reason ORDER BY n DESC, reason",
                       q=quarantine.select(["reason"])):
            by_reason.add_row(r["reason"], f"{r['n']:,}")
        console.print(by_reason)

    events = _load(s, tables.SILVER_EVENTS)
    if events is not None:
        [late] = _rows("SELECT count(*) FILTER (WHERE late) AS n FROM e", e=events.select(["late"]))
        console.print(f"silver events behind the watermark (kept in silver, skipped by gold "
                      f"streams): {late['n']:,}")
    print_report(s, console, quiet=True)
    print_fraud(s, console)
    print_notifications(s, console)


_EVENT_ID = r'"event_id"\s*:\s*"([^"]*)"'


def conservation(s: Settings) -> dict[str, int] | None:
    """Every bronze line is a silver row, a quarantine row, or a removed redelivery of an event
    kept once: the counts, with the redeliveries counted on their own (bronze lines whose
    ``event_id`` is that of an event silver kept, or the quality suite dropped, beyond the
    first) so that the sum checks something. None before the three tables exist."""
    bronze, silver, quarantine = (_load(s, t) for t in (tables.BRONZE_EVENTS, tables.SILVER_EVENTS,
                                                        tables.SILVER_QUARANTINE))
    if bronze is None or silver is None or quarantine is None:
        return None
    [row] = _rows(f"""
        WITH kept AS (SELECT event_id AS id FROM s
                      UNION SELECT regexp_extract(raw, '{_EVENT_ID}', 1) FROM q
                            WHERE reason LIKE 'expectation:%'),
             lines AS (SELECT regexp_extract(raw, '{_EVENT_ID}', 1) AS id FROM b)
        SELECT (SELECT count(*) FROM b) AS bronze, (SELECT count(*) FROM s) AS silver,
               (SELECT count(*) FROM q) AS quarantine,
               (SELECT count(*) FROM lines WHERE id IN (SELECT id FROM kept)) - (SELECT count(*) FROM kept)
                   AS duplicates""",
        b=bronze.select(["raw"]), s=silver.select(["event_id"]), q=quarantine.select(["raw", "reason"]))
    return row


def print_conservation(s: Settings, console: Console) -> None:
    """bronze = silver + quarantine + removed redeliveries, and whether it holds."""
    c = conservation(s)
    if c is None:
        return
    off = c["bronze"] - c["silver"] - c["quarantine"] - c["duplicates"]
    verdict = "holds" if off == 0 else f"[red]does not hold: {off:+,} lines unaccounted for[/red]"
    console.print(f"conservation: bronze {c['bronze']:,} = silver {c['silver']:,} + quarantine "
                  f"{c['quarantine']:,} + redeliveries removed {c['duplicates']:,}: {verdict}",
                  soft_wrap=True)


def print_notifications(s: Settings, console: Console, examples: int = 3) -> None:
    """The outbox by kind, channel and status; with a channel off, what it would send."""
    from pipelines.notify.channels import channels

    data = _load(s, tables.NOTIFICATIONS)
    if data is None or data.num_rows == 0:
        return
    table = RichTable(title="Notices (ops/notifications)")
    for col in ("kind", "channel", "status", "notices"):
        table.add_column(col, justify="right" if col == "notices" else "left")
    for r in _rows("SELECT kind, channel, status, count(*) AS n FROM o GROUP BY ALL ORDER BY ALL",
                   o=data.select(["kind", "channel", "status"])):
        table.add_row(r["kind"], r["channel"], r["status"], f"{r['n']:,}")
    console.print(table)
    try:
        on = set(channels(s.notify))
    except ValueError:  # configured in part: the job itself says which variable is missing
        on = set()
    off = sorted(set(data.column("channel").to_pylist()) - on)
    if off:
        console.print(f"channels off (no FUNNELHOUSE_* secrets set): {', '.join(off)}; their notices "
                      f"wait as pending. Would send, for example:")
        for r in _rows(f"SELECT channel, recipient, subject FROM o WHERE status = 'pending' "
                       f"QUALIFY row_number() OVER (PARTITION BY kind ORDER BY notification_id) <= 1 "
                       f"ORDER BY kind LIMIT {int(examples) * 4}",
                       o=data.drop_columns(["payload"])):
            console.print(f"  {r['channel']} -> {r['recipient']}: {r['subject']}")


def print_fraud(s: Settings, console: Console, limit: int = 15) -> None:
    """The latest fraud flags, one line per flagged burst."""
    data = _load(s, tables.FRAUD_FLAGS)
    if data is None:
        return
    flags = _rows(f"SELECT * EXCLUDE (evidence_event_ids) FROM f ORDER BY last_event_time DESC, flag_id "
                  f"LIMIT {int(limit)}", f=data)
    table = RichTable(title=f"Fraud flags (latest {limit})")
    for col in ("rule", "entity", "first event", "span s", "events", "measure", "threshold"):
        table.add_column(col, justify="right" if col in ("span s", "events", "measure", "threshold")
                         else "left")
    for f in flags:
        span = (f["last_event_time"] - f["first_event_time"]).total_seconds()
        table.add_row(f["rule"], f"{f['entity_type']} {f['entity_id']}",
                      f"{f['first_event_time']:%Y-%m-%d %H:%M:%S}",
                      f"{span:.1f}", str(f["event_count"]), f"{f['measure_value']} ({f['measure']})",
                      str(f["threshold"]))
    console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def funnel_by_campaign(funnel: pa.Table) -> list[dict]:
    """Campaign funnel summed over windows: sessions reaching each step, per campaign."""
    sums = ", ".join(f"sum(reached_{step}) AS {step}" for step in STEPS)
    return _rows(f"SELECT campaign_id, {sums} FROM f GROUP BY campaign_id ORDER BY campaign_id", f=funnel)


SHORT = {"ad_impression": "impr", "ad_click": "click", "landing_page_view": "land",
         "add_to_cart": "cart", "checkout_start": "checkout", "purchase": "buy"}


def print_report(s: Settings, console: Console, quiet: bool = False) -> None:
    """The funnel per campaign, the drop-off alerts and the budget recommendation."""
    cells = _load(s, tables.CAMPAIGN_FUNNEL)
    if cells is None:
        if not quiet:
            console.print("no gold tables yet: run `funnelhouse run` first")
        return
    alert_rows = _load(s, tables.ALERTS)
    alerts = [] if alert_rows is None else _rows("SELECT * FROM a", a=alert_rows)
    alerted = {a["campaign_id"] for a in alerts}
    funnel = RichTable(title="Funnel per campaign: sessions reaching each step "
                             "(conversion from the step before); ! = alerted")
    funnel.add_column("campaign")
    for step in STEPS:
        funnel.add_column(SHORT[step], justify="right")
    funnel.add_column("biggest drop-off")
    for row in funnel_by_campaign(cells):
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
            table.add_row(a["rule"], a["campaign_id"], f"{a['window_start']:%Y-%m-%d %H:%M}",
                          _pct(a["value"]), _pct(a["threshold"]), f"{a['volume']:,}")
        console.print(table)

    performance = _load(s, tables.CAMPAIGN_PERFORMANCE)
    perf = [] if performance is None else _rows(
        "SELECT * FROM p ORDER BY budget_change DESC NULLS LAST, campaign_id", p=performance)
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


def print_quality(s: Settings, console: Console, last: int = 5) -> None:
    """One row per (suite, batch, expectation) for the ``last`` batches of each suite, newest
    first. Batches are ordered by validation time: batch ids restart with a new checkpoint, and
    a backfill's are days (``yyyymmdd``)."""
    results = _load(s, tables.QUALITY_RESULTS)
    if results is None:
        console.print("no quality results yet (run the pipeline first)")
        return
    rows = _rows(f"""
        WITH batches AS (
            SELECT suite, query, batch_id, max(validated_at) AS _at FROM r GROUP BY ALL),
        recent AS (
            SELECT * FROM batches
            QUALIFY row_number() OVER (PARTITION BY suite ORDER BY _at DESC) <= {int(last)})
        SELECT r.*, recent._at FROM r JOIN recent USING (suite, query, batch_id)
        ORDER BY suite, _at DESC, query, batch_id, expectation""", r=results)
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


def print_maintenance(console: Console, done: list, dry_run: bool) -> None:
    """Per table: rows expired and folded, files before and after compaction, files vacuumed."""
    table = RichTable(title="Maintenance" + (" (dry run)" if dry_run else ""))
    for col in ("table", "rows expired", "rows folded", "files before", "files after",
                "would vacuum" if dry_run else "vacuumed"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for m in done:
        table.add_row(m.table, *[f"{n:,}" for n in (m.expired, m.folded, m.files_before, m.files_after,
                                                    m.vacuumed)])
    console.print(table)


def print_models(versions: list[dict], console: Console, name: str) -> None:
    """Registered versions side by side, one column each, newest first (``funnelhouse model
    review``): aliases, when, what it was trained on, and every metric its run logged."""
    if not versions:
        console.print(f"no version of {name} is registered yet: run `funnelhouse train`")
        return
    table = RichTable(title=f"{name}: registered versions")
    table.add_column("")
    for v in versions:
        table.add_column(f"v{v['version']}", justify="right")

    def row(label: str, cell) -> None:
        table.add_row(label, *(cell(v) for v in versions))

    row("aliases", lambda v: ", ".join(v["aliases"]) or "-")
    row("created", lambda v: f"{v['created']:%Y-%m-%d %H:%M}")
    row("sessions", lambda v: v["params"].get("sessions", "-"))
    row("features", lambda v: str(len(v["params"].get("features", "").split(","))))
    row("contamination", lambda v: v["params"].get("contamination", "-"))
    row("threshold", lambda v: f"{float(v['params'].get('threshold', 'nan')):.4f}")
    for m in sorted({m for v in versions for m in v["metrics"]}):
        row(m.replace("_", " "), lambda v, m=m: f"{v['metrics'][m]:.4g}" if m in v["metrics"] else "-")
    console.print(table)
