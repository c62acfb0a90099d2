"""The gold layer as one web page: Plotly charts and plain tables, read with delta-rs and
DuckDB (``lake_sql``), never Spark.

``snapshot(lake)`` reads what the page shows; ``render(snapshot, ...)`` turns it into HTML;
both are pure of any server. ``funnelhouse dashboard --out report.html`` writes one
self-contained file (plotly.js inlined); ``funnelhouse serve`` renders the page again on
every request and the page reloads itself every ``refresh`` seconds.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from pipelines.lake_sql import connect, mentioned, table_paths
from pipelines.steps import STEPS

SHORT = {"ad_impression": "impression", "ad_click": "click", "landing_page_view": "landing",
         "add_to_cart": "cart", "checkout_start": "checkout", "purchase": "purchase"}

# What the page reads: one query per section, each over the views it names.
QUERIES = {
    "funnel": "SELECT campaign_id, " + ", ".join(f"sum(reached_{s})::BIGINT AS {s}" for s in STEPS)
              + " FROM gold_campaign_funnel GROUP BY campaign_id ORDER BY campaign_id",
    "over_time": "SELECT window_start, sum(reached_ad_click)::BIGINT AS clicks, "
                 "sum(reached_add_to_cart)::BIGINT AS carts, sum(reached_purchase)::BIGINT AS purchases "
                 "FROM gold_campaign_funnel GROUP BY window_start ORDER BY window_start",
    "alerts": "SELECT campaign_id, rule, window_start, value, threshold, volume, message "
              "FROM gold_alerts ORDER BY window_start DESC, campaign_id LIMIT 50",
    "league": "SELECT campaign_id, clicks, purchases, purchase_conversion, revenue, current_budget_share, "
              "recommended_budget_share, budget_change FROM gold_campaign_performance "
              "ORDER BY budget_change DESC NULLS LAST, campaign_id",
    "budget_rule": "SELECT any_value(budget_rule) AS rule FROM gold_campaign_performance",
    "fraud_by_rule": "SELECT rule, entity_type, count(*)::BIGINT AS flags FROM gold_fraud_flags "
                     "GROUP BY ALL ORDER BY rule",
    "fraud": "SELECT rule, entity_type, entity_id, first_event_time, event_count, peak_value, threshold "
             "FROM gold_fraud_flags ORDER BY first_event_time DESC, flag_id LIMIT 25",
    "messages": "SELECT 'retarget offers' AS kind, date_trunc('hour', due_time) AS hour, "
                "count(*)::BIGINT AS n "
                "FROM gold_retarget_offers GROUP BY ALL UNION ALL "
                "SELECT 'cart reminders', date_trunc('hour', session_end), count(*)::BIGINT "
                "FROM gold_cart_reminders GROUP BY ALL ORDER BY hour",
    "delivery": "SELECT kind, channel, status, count(*)::BIGINT AS n FROM ops_notifications "
                "GROUP BY ALL ORDER BY kind, channel, status",
    "throughput": "SELECT 'silver' AS layer, date_trunc('minute', ingest_time) AS minute, "
                  "count(*)::BIGINT AS n "
                  "FROM silver_events GROUP BY ALL UNION ALL "
                  "SELECT 'quarantine', date_trunc('minute', quarantine_time), count(*)::BIGINT "
                  "FROM silver_quarantine GROUP BY ALL ORDER BY minute",
}


@dataclass
class Snapshot:
    lake: str
    taken: datetime
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def get(self, name: str) -> pd.DataFrame:
        return self.frames.get(name, pd.DataFrame())


def snapshot(lake: str | Path) -> Snapshot:
    """Every section's rows, from the tables as they are now. A section whose table does not
    exist yet is left empty."""
    present = set(table_paths(lake))
    con = connect(lake)
    shot = Snapshot(str(lake), datetime.now(UTC))
    for name, sql in QUERIES.items():
        needed = {w for w in sql.replace(",", " ").split() if w.startswith(("gold_", "silver_", "ops_"))}
        if needed <= set(mentioned(sql, present)):
            shot.frames[name] = con.sql(sql).df()
    return shot


# -- charts ---------------------------------------------------------------------------------

def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=60, r=20, t=50, b=50),
                      template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


def funnel_figure(funnel: pd.DataFrame) -> go.Figure:
    """All campaigns' sessions reaching each step, as a funnel."""
    totals = [int(funnel[s].sum()) for s in STEPS]
    previous = [None, *totals[:-1]]
    text = [f"{n:,}" + (f" ({n / p:.0%} of previous)" if p else "")
            for n, p in zip(totals, previous, strict=True)]
    fig = go.Figure(go.Bar(y=[SHORT[s] for s in STEPS], x=totals, orientation="h", text=text,
                           textposition="auto", marker_color="#4c78a8"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Sessions reaching each step (all campaigns)")


def conversion_heatmap(funnel: pd.DataFrame) -> go.Figure:
    """Per campaign and step: conversion from the step before. The drop-offs show as dark cells."""
    steps = list(STEPS)
    rates = [[(row[b] / row[a]) if row[a] else None for a, b in zip(steps, steps[1:], strict=False)]
             for _, row in funnel.iterrows()]
    fig = go.Figure(go.Heatmap(
        z=rates, x=[f"{SHORT[a]}→{SHORT[b]}" for a, b in zip(steps, steps[1:], strict=False)],
        y=list(funnel["campaign_id"]), colorscale="RdYlGn", zmin=0, zmax=1,
        texttemplate="%{z:.0%}", hovertemplate="%{y} %{x}: %{z:.1%}<extra></extra>"))
    return _layout(fig, "Funnel per campaign: conversion from the step before",
                   height=max(380, 24 * len(funnel) + 120))


def over_time_figure(over_time: pd.DataFrame) -> go.Figure:
    clicks = over_time["clicks"].where(over_time["clicks"] > 0)
    fig = go.Figure([
        go.Scatter(x=over_time["window_start"], y=over_time["carts"] / clicks, name="click → cart",
                   mode="lines+markers"),
        go.Scatter(x=over_time["window_start"], y=over_time["purchases"] / clicks, name="click → purchase",
                   mode="lines+markers")])
    fig.update_yaxes(tickformat=".0%")
    return _layout(fig, "Conversion over time (per funnel window, all campaigns)")


def fraud_figure(by_rule: pd.DataFrame) -> go.Figure:
    fig = go.Figure([go.Bar(x=part["rule"], y=part["flags"], name=entity)
                     for entity, part in by_rule.groupby("entity_type")])
    return _layout(fig, "Fraud flags by rule", height=320)


def messages_figure(messages: pd.DataFrame) -> go.Figure:
    fig = go.Figure([go.Bar(x=part["hour"], y=part["n"], name=kind)
                     for kind, part in messages.groupby("kind")])
    fig.update_layout(barmode="group")
    return _layout(fig, "Retarget offers (by due hour) and cart reminders (by session end)", height=320)


def throughput_figure(throughput: pd.DataFrame) -> go.Figure:
    fig = go.Figure([go.Bar(x=part["minute"], y=part["n"], name=layer)
                     for layer, part in throughput.groupby("layer")])
    fig.update_layout(barmode="stack")
    return _layout(fig, "Pipeline throughput: rows committed per minute (by ingest time)", height=320)


def figures(shot: Snapshot) -> list[tuple[str, go.Figure]]:
    """(section id, chart) for every section with rows."""
    charts = []
    if len(shot.get("funnel")):
        charts += [("funnel", funnel_figure(shot.get("funnel"))),
                   ("campaigns", conversion_heatmap(shot.get("funnel")))]
    if len(shot.get("over_time")):
        charts.append(("over-time", over_time_figure(shot.get("over_time"))))
    if len(shot.get("fraud_by_rule")):
        charts.append(("fraud-rules", fraud_figure(shot.get("fraud_by_rule"))))
    if len(shot.get("messages")):
        charts.append(("messages", messages_figure(shot.get("messages"))))
    if len(shot.get("throughput")):
        charts.append(("throughput", throughput_figure(shot.get("throughput"))))
    return charts


# -- page -----------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, pd.Timestamp | datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return html.escape(str(value))


def table_html(frame: pd.DataFrame, id_: str, percent: tuple[str, ...] = ()) -> str:
    if not len(frame):
        return f'<p class="empty" id="{id_}">none yet</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    cells = ("".join(f"<td>{_pct(v) if c in percent else _cell(v)}</td>" for c, v in row.items())
             for _, row in frame.iterrows())
    body = "".join(f"<tr>{row}</tr>" for row in cells)
    return f'<table id="{id_}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _pct(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:+.1%}" if value < 0 else f"{value:.1%}"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { margin-bottom: 0; } .meta { color: #666; margin-top: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px;
        align-items: start; margin-bottom: 16px; }
.wide { grid-template-columns: 1fr; }
section { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 0; overflow: hidden; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: left; }
td { font-variant-numeric: tabular-nums; } .empty { color: #888; }
"""


def render(shot: Snapshot, plotly_js: str | bool = True, refresh: int | None = None) -> str:
    """The page. ``plotly_js``: True inlines plotly.js (one self-contained file); a string is
    the URL of a script to load instead. ``refresh``: seconds between the page's own reloads."""
    charts = figures(shot)
    parts = []
    for i, (id_, fig) in enumerate(charts):
        parts.append(f'<section class="chart">{fig.to_html(full_html=False, div_id=id_, default_width="100%", config={"responsive": True}, include_plotlyjs=plotly_js if i == 0 else False)}</section>')  # noqa: E501
    reload = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    delivery = shot.get("delivery")
    rule = shot.get("budget_rule")
    rule_note = f'<p class="meta">budget rule: {html.escape(str(rule["rule"][0]))}</p>' if len(rule) else ""
    tables = [
        ("Drop-off alerts", table_html(shot.get("alerts"), "alerts", ("value", "threshold"))),
        ("Campaign league table and budget recommendation",
         table_html(shot.get("league"), "league",
                    ("purchase_conversion", "current_budget_share", "recommended_budget_share",
                     "budget_change")) + rule_note),
        ("Latest fraud flags", table_html(shot.get("fraud"), "fraud")),
        ("Notices (ops/notifications)", table_html(delivery, "delivery")),
    ]
    sections = "".join(f"<section><h2>{title}</h2>{body}</section>" for title, body in tables)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{reload}
<title>Funnelhouse: {html.escape(shot.lake)}</title><style>{STYLE}</style></head>
<body><h1>Funnelhouse</h1>
<p class="meta">lake {html.escape(shot.lake)} · read {shot.taken:%Y-%m-%d %H:%M:%S} UTC
{f"· reloads every {refresh} s" if refresh else ""}</p>
<div class="grid">{"".join(parts)}</div>
<div class="grid wide">{sections}</div>
</body></html>"""


def write(lake: str | Path, out: str | Path) -> Path:
    """``funnelhouse dashboard``: the page as one self-contained HTML file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(snapshot(lake), plotly_js=True), encoding="utf-8")
    return out


def serve(lake: str | Path, port: int = 8050, refresh: int = 10, host: str = "127.0.0.1"):
    """``funnelhouse serve``: the page at ``http://host:port/``, read from the lake on every
    request; plotly.js is served once from ``/plotly.min.js`` and cached by the browser.
    Returns the server (call ``serve_forever``)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from plotly.offline import get_plotlyjs

    script = get_plotlyjs().encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/plotly.min.js":
                self._send(200, "application/javascript", script, cache=True)
            elif self.path in ("/", "/index.html"):
                body = render(snapshot(lake), plotly_js="/plotly.min.js", refresh=refresh)
                self._send(200, "text/html; charset=utf-8", body.encode())
            elif self.path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, kind: str, body: bytes, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet: no line per request
            pass

    return ThreadingHTTPServer((host, port), Page)
