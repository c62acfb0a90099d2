"""Gold rows -> notices, and notices -> each channel's message. Pure: no I/O but reading the
templates.

A notice's id is a hash of its kind, its source row's id and its channel, so a replayed
micro-batch, a restarted job or a backfill that produces the same gold row produces the same
notice, and the outbox (keyed on the id) records it once.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import REPO_ROOT, NotifySettings

TEMPLATES = REPO_ROOT / "conf" / "templates"
KINDS = ("dropoff", "fraud", "offer", "reminder")
SOURCE_TABLE = {"dropoff": "gold/alerts", "fraud": "gold/fraud_flags", "offer": "gold/retarget_offers",
                "reminder": "gold/cart_reminders"}
SOURCE_KEY = {"dropoff": "alert_id", "fraud": "flag_id", "offer": "offer_id", "reminder": "reminder_id"}
ON_CALL = ("dropoff", "fraud")  # never suppressed by a limit
EVIDENCE = 5  # event ids quoted in a fraud message


@dataclass(frozen=True)
class Notice:
    notification_id: str
    kind: str
    channel: str
    source_id: str
    recipient: str
    subject: str
    payload: dict[str, Any]
    day: date  # the UTC day of the source row's time: the outbox partition, the limits' day


def notification_id(kind: str, source_id: str, channel: str) -> str:
    return hashlib.sha1(f"{kind}|{source_id}|{channel}".encode()).hexdigest()


def notices(kind: str, rows: Iterable[Mapping[str, Any]], s: NotifySettings) -> list[Notice]:
    """One notice per row of a gold table (``kind`` names which) and channel routed to."""
    out = []
    for row in rows:
        subject, payload, when = _BUILD[kind](row, s)
        source_id = row[SOURCE_KEY[kind]]
        for channel in s.routes.get(kind, []):  # type: ignore[call-overload]
            out.append(Notice(notification_id(kind, source_id, channel), kind, channel, source_id,
                              recipient(kind, channel, row, s), subject, payload, when.date()))
    return out


NOTICE_COLUMNS = ["notification_id", "kind", "channel", "source_id", "recipient", "subject", "payload", "day"]


def notice_frame(kind: str, rows: pa.Table, s: NotifySettings) -> pd.DataFrame:
    """``notices`` over a whole table at once, for the stream's micro-batches: one row per
    gold row and channel routed to (``NOTICE_COLUMNS``; ``payload`` as JSON text). Offers,
    reminders and fraud flags come by the thousand and are built column by column (the same
    values: tests/test_notify.py holds the two to the same notices); drop-off alerts, a few
    per window, go through ``notices``."""
    channels = s.routes.get(kind, [])  # type: ignore[call-overload]
    if not channels or rows.num_rows == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in NOTICE_COLUMNS})
    if kind not in _COLUMNS:
        return pd.DataFrame([(n.notification_id, n.kind, n.channel, n.source_id, n.recipient, n.subject,
                              to_json(n.payload), n.day) for n in notices(kind, rows.to_pylist(), s)],
                            columns=NOTICE_COLUMNS)
    df = rows.to_pandas()
    subject, payload, when = _COLUMNS[kind](df, s)
    text = payload[sorted(payload.columns)].to_json(orient="records", lines=True, double_precision=15)
    source = df[SOURCE_KEY[kind]]
    base = pd.DataFrame({"kind": kind, "source_id": source.to_numpy(object),
                         "subject": subject.to_numpy(object), "payload": text.rstrip("\n").split("\n"),
                         "day": when.dt.date.to_numpy(object)})
    parts = []
    for channel in channels:
        part = base.assign(channel=channel)
        part["notification_id"] = [notification_id(kind, i, channel) for i in base["source_id"]]
        part["recipient"] = (channel if channel != "email" else s.on_call_email if kind in ON_CALL else
                             [s.recipient.format(user_id=u, tracking_id=t) for u, t in
                              zip(_ids(df, "user_id"), _ids(df, "tracking_id"), strict=True)])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[NOTICE_COLUMNS]


def _ids(df: pd.DataFrame, column: str) -> list:
    return df[column].tolist() if column in df else [None] * len(df)


def _iso_column(t: pd.Series) -> pd.Series:
    """``_iso`` of UTC timestamps (after 1970), column-wise, formatted by Arrow (None for a
    missing one)."""
    times = pa.array(t)
    seconds = pc.cast(times, pa.timestamp("s", times.type.tz), safe=False)  # cut, as ``_iso``
    text = pc.strftime(seconds, format="%Y-%m-%d %H:%M:%S+00:00")
    return pd.Series(text.to_numpy(zero_copy_only=False), index=t.index, dtype=object)


def _fraud_columns(df: pd.DataFrame, s: NotifySettings) -> tuple[pd.Series, pd.DataFrame, pd.Series]:
    evidence = df["evidence_event_ids"].map(lambda e: [] if e is None else list(e))
    payload = pd.DataFrame({
        "rule": df["rule"], "entity_type": df["entity_type"], "entity_id": df["entity_id"],
        "first_event_time": _iso_column(df["first_event_time"]),
        "last_event_time": _iso_column(df["last_event_time"]), "event_count": df["event_count"],
        "measure": df["measure"], "peak_value": df["peak_value"], "threshold": df["threshold"],
        "window_seconds": df["window_seconds"], "evidence": evidence.map(lambda e: e[:EVIDENCE]),
        "evidence_total": evidence.map(len)})
    window = df["window_seconds"].map(lambda w: f"{w:g}")
    subject = ("Flag for review: " + df["entity_type"] + " " + df["entity_id"] + " (" + df["rule"] + ": "
               + df["measure"] + " " + df["peak_value"].astype(str) + " >= " + df["threshold"].astype(str)
               + " within " + window + " s)")
    return subject, payload, df["last_event_time"]


def _offer_columns(df: pd.DataFrame, s: NotifySettings) -> tuple[pd.Series, pd.DataFrame, pd.Series]:
    payload = pd.DataFrame({"user_id": df["user_id"], "campaign_id": df["campaign_id"],
                            "tracking_id": df["tracking_id"], "click_time": _iso_column(df["click_time"]),
                            "due_time": _iso_column(df["due_time"]), "discount": s.discount})
    return pd.Series(f"{s.discount:.0%} off: come back to your cart", index=df.index), payload, df["due_time"]


def _reminder_columns(df: pd.DataFrame, s: NotifySettings) -> tuple[pd.Series, pd.DataFrame, pd.Series]:
    payload = pd.DataFrame({"user_id": df["user_id"], "tracking_id": df["tracking_id"],
                            "session_end": _iso_column(df["session_end"]), "adds": df["adds"],
                            "products": df["products"].map(lambda p: [] if p is None else list(p))})
    return pd.Series("You left something in your cart", index=df.index), payload, df["session_end"]


_COLUMNS = {"fraud": _fraud_columns, "offer": _offer_columns, "reminder": _reminder_columns}


def recipient(kind: str, channel: str, row: Mapping[str, Any], s: NotifySettings) -> str:
    """An email address for a user's notice (``notify.recipient`` over the row's ids), the
    on-call address for the others; Slack and webhooks have one destination: the channel."""
    if channel != "email":
        return channel
    if kind in ON_CALL:
        return s.on_call_email
    return s.recipient.format(user_id=row.get("user_id"), tracking_id=row.get("tracking_id"))


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(sep=" ", timespec="seconds")


def _dropoff(row: Mapping[str, Any], s: NotifySettings) -> tuple[str, dict[str, Any], datetime]:
    payload = {"campaign_id": row["campaign_id"], "rule": row["rule"], "metric": row["metric"],
               "value": row["value"], "threshold": row["threshold"], "volume": row["volume"],
               "window_start": _iso(row["window_start"]), "window_end": _iso(row["window_end"])}
    subject = (f"Drop-off in {row['campaign_id']}: {row['metric']} {row['value']:.1%} "
               f"< {row['threshold']:.0%} ({row['rule']})")
    return subject, payload, row["window_end"]


def _fraud(row: Mapping[str, Any], s: NotifySettings) -> tuple[str, dict[str, Any], datetime]:
    evidence = list(row["evidence_event_ids"] or [])
    payload = {"rule": row["rule"], "entity_type": row["entity_type"], "entity_id": row["entity_id"],
               "first_event_time": _iso(row["first_event_time"]),
               "last_event_time": _iso(row["last_event_time"]), "event_count": row["event_count"],
               "measure": row["measure"], "peak_value": row["peak_value"], "threshold": row["threshold"],
               "window_seconds": row["window_seconds"], "evidence": evidence[:EVIDENCE],
               "evidence_total": len(evidence)}
    subject = (f"Flag for review: {row['entity_type']} {row['entity_id']} ({row['rule']}: "
               f"{row['measure']} {row['peak_value']} >= {row['threshold']} within "
               f"{row['window_seconds']:g} s)")
    return subject, payload, row["last_event_time"]


def _offer(row: Mapping[str, Any], s: NotifySettings) -> tuple[str, dict[str, Any], datetime]:
    payload = {"user_id": row["user_id"], "campaign_id": row["campaign_id"],
               "tracking_id": row["tracking_id"], "click_time": _iso(row["click_time"]),
               "due_time": _iso(row["due_time"]), "discount": s.discount}
    return f"{s.discount:.0%} off: come back to your cart", payload, row["due_time"]


def _reminder(row: Mapping[str, Any], s: NotifySettings) -> tuple[str, dict[str, Any], datetime]:
    products = list(row["products"] or [])
    payload = {"user_id": row["user_id"], "tracking_id": row["tracking_id"],
               "session_end": _iso(row["session_end"]), "adds": row["adds"], "products": products}
    return "You left something in your cart", payload, row["session_end"]


_BUILD = {"dropoff": _dropoff, "fraud": _fraud, "offer": _offer, "reminder": _reminder}


def slack_message(n: Notice) -> dict[str, Any]:
    """Block Kit: a header, the facts as fields, and (fraud) the first evidence ids."""
    p = n.payload
    if n.kind == "dropoff":
        title = f":chart_with_downwards_trend: Drop-off: {p['campaign_id']}"
        fields = {"Rule": p["rule"], "Window": f"{p['window_start']} to {p['window_end']}",
                  "Value": f"{p['metric']} {p['value']:.1%}", "Threshold": f"{p['threshold']:.0%}",
                  "Volume": f"{p['volume']} sessions"}
    elif n.kind == "fraud":
        title = f":rotating_light: Flag for review: {p['entity_type']} {p['entity_id']}"
        fields = {"Rule": p["rule"], "Span": f"{p['first_event_time']} to {p['last_event_time']}",
                  "Count": f"{p['event_count']} events", "Peak": f"{p['measure']} {p['peak_value']} "
                  f">= {p['threshold']} within {p['window_seconds']:g} s"}
    else:
        title = n.subject
        fields = {k: str(v) for k, v in p.items()}
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()]},
    ]
    if n.kind == "fraud":
        more = p["evidence_total"] - len(p["evidence"])
        ids = ", ".join(f"`{e}`" for e in p["evidence"]) + (f" and {more} more" if more > 0 else "")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Evidence: {ids}"}]})
    return {"text": n.subject, "blocks": blocks}


def email_message(n: Notice, templates: Path = TEMPLATES) -> tuple[str, str, str]:
    """(subject, plain text, HTML) from ``conf/templates/<kind>.txt`` and ``.html``: Python
    format strings over the payload, plus ``subject`` and ``discount_percent``; lists are
    given as ``<name>_text`` (one per line) and ``<name>_html`` (list items)."""
    fields = {k: v for k, v in n.payload.items()}
    fields["subject"] = n.subject
    if "discount" in fields:
        fields["discount_percent"] = f"{fields['discount']:.0%}"
    for k, v in n.payload.items():
        if isinstance(v, list):
            fields[f"{k}_text"] = "\n".join(f"  - {x}" for x in v)
            fields[f"{k}_html"] = "".join(f"<li>{html.escape(str(x))}</li>" for x in v)
    escaped = {k: v if k.endswith("_html") else html.escape(str(v)) for k, v in fields.items()}
    text = (templates / f"{n.kind}.txt").read_text().format(**fields)
    body = (templates / f"{n.kind}.html").read_text().format(**escaped)
    return n.subject, text, body


def webhook_body(n: Notice) -> dict[str, Any]:
    """The generic webhook's JSON: the notice's identity and its payload."""
    return {"notification_id": n.notification_id, "kind": n.kind, "source_id": n.source_id,
            "subject": n.subject, "payload": n.payload}


def to_json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, default=str)
