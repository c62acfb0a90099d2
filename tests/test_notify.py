"""Alert delivery against real receivers: an HTTP server (Slack's webhook protocol and the
generic webhook) and an aiosmtpd SMTP server. Expected messages are written out by hand, and
counts come from the sample's gold tables and the generator's truth."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from datetime import date, datetime
from email import message_from_bytes
from email.policy import default as email_policy

import pyarrow as pa
import pytest
from aiosmtpd.controller import Controller
from deltalake import DeltaTable
from helpers import SAMPLE, Receiver, copy_sample, free_port, lake_copy
from typer.testing import CliRunner

from pipelines import tables
from pipelines.cli import app
from pipelines.config import NotifySettings
from pipelines.io.delta_rs import arrow_schema
from pipelines.jobs.notify import run_notify
from pipelines.jobs.run import run_available_now
from pipelines.notify.messages import (
    email_message,
    notice_frame,
    notices,
    notification_id,
    slack_message,
    webhook_body,
)

TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())
SECRET = "T000/B000/not-a-real-secret-9f8e7d"


class Inbox:
    """aiosmtpd's handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content, policy=email_policy))
        return "250 OK"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def smtp():
    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def _env(receiver: Receiver, smtp_port: int) -> dict[str, str]:
    return {"FUNNELHOUSE_SLACK_WEBHOOK_URL": f"{receiver.url}/slack/{SECRET}",
            "FUNNELHOUSE_WEBHOOK_URL": f"{receiver.url}/hook",
            "FUNNELHOUSE_SMTP_HOST": "127.0.0.1", "FUNNELHOUSE_SMTP_PORT": str(smtp_port),
            "FUNNELHOUSE_SMTP_FROM": "funnelhouse@example.com"}


def _outbox(s) -> list[dict]:
    return DeltaTable(s.table("ops/notifications")).to_pyarrow_table().to_pylist()


# Hand-built gold rows and the messages they must give.
ALERT = {"alert_id": "a1", "kind": "dropoff", "rule": "click_to_cart", "campaign_id": "cmp_07",
         "window_start": datetime(2026, 11, 2, 10), "window_end": datetime(2026, 11, 2, 11),
         "metric": "add_to_cart/ad_click", "value": 0.125, "threshold": 0.2, "volume": 160,
         "message": "", "created_at": datetime(2026, 11, 2, 12)}
FLAG = {"flag_id": "f1", "rule": "R1", "entity_type": "user", "entity_id": "u9",
        "first_event_time": datetime(2026, 11, 2, 10, 0, 0),
        "last_event_time": datetime(2026, 11, 2, 10, 0, 4),
        "event_count": 12, "measure": "count", "measure_value": 12, "peak_value": 12, "threshold": 10,
        "window_seconds": 5.0, "evidence_event_ids": [f"e{i}" for i in range(12)]}
OFFER = {"offer_id": "o1", "user_id": "u1", "campaign_id": "cmp_03", "tracking_id": "t1",
         "click_time": datetime(2026, 11, 2, 9, 0), "due_time": datetime(2026, 11, 2, 9, 10),
         "created_at": datetime(2026, 11, 2, 9, 11)}
REMINDER = {"reminder_id": "r1", "user_id": "u2", "tracking_id": "t2",
            "session_start": datetime(2026, 11, 2, 8), "session_end": datetime(2026, 11, 2, 8, 20),
            "adds": 3, "products": ["p_001", "p_002"],
            "created_at": datetime(2026, 11, 2, 9)}


def test_the_messages_are_exactly_these():
    s = NotifySettings(routes={"dropoff": ["slack", "webhook"], "fraud": ["slack"], "offer": ["email"],
                               "reminder": ["email"]})
    [slack, hook] = notices("dropoff", [ALERT], s)
    assert slack.notification_id == notification_id("dropoff", "a1", "slack") != hook.notification_id
    assert (slack.recipient, hook.recipient, slack.day) == ("slack", "webhook", date(2026, 11, 2))
    assert slack_message(slack) == {
        "text": "Drop-off in cmp_07: add_to_cart/ad_click 12.5% < 20% (click_to_cart)",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text",
                                        "text": ":chart_with_downwards_trend: Drop-off: cmp_07"}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": "*Rule*\nclick_to_cart"},
                {"type": "mrkdwn", "text": "*Window*\n2026-11-02 10:00:00 to 2026-11-02 11:00:00"},
                {"type": "mrkdwn", "text": "*Value*\nadd_to_cart/ad_click 12.5%"},
                {"type": "mrkdwn", "text": "*Threshold*\n20%"},
                {"type": "mrkdwn", "text": "*Volume*\n160 sessions"}]}]}
    assert webhook_body(hook)["payload"] == {
        "campaign_id": "cmp_07", "rule": "click_to_cart", "metric": "add_to_cart/ad_click", "value": 0.125,
        "threshold": 0.2, "volume": 160, "window_start": "2026-11-02 10:00:00",
        "window_end": "2026-11-02 11:00:00"}

    [flag] = notices("fraud", [FLAG], s)
    message = slack_message(flag)
    assert message["text"] == "Flag for review: user u9 (R1: count 12 >= 10 within 5 s)"
    assert message["blocks"][2] == {"type": "context", "elements": [
        {"type": "mrkdwn", "text": "Evidence: `e0`, `e1`, `e2`, `e3`, `e4` and 7 more"}]}

    [offer] = notices("offer", [OFFER], s)
    subject, text, html = email_message(offer)
    assert (offer.recipient, subject) == ("u1@example.com", "10% off: come back to your cart")
    assert "(cmp_03) at 2026-11-02 09:00:00 UTC" in text and "10% off your next purchase" in text
    assert "<b>10% off</b>" in html

    [reminder] = notices("reminder", [REMINDER], s)
    _, text, html = email_message(reminder)
    assert "You added 3 items to your cart and left at 2026-11-02 08:20:00 UTC" in text
    assert "  - p_001\n  - p_002\n" in text and "<ul><li>p_001</li><li>p_002</li></ul>" in html


def _expected_emails(s) -> tuple[int, int]:
    """(emails to send, suppressed) under the default limits, 1 offer and 1 reminder per user
    per day, counted from the gold tables by hand."""
    sent = suppressed = 0
    for table, day_of in (("gold/retarget_offers", "due_time"), ("gold/cart_reminders", "session_end")):
        rows = DeltaTable(s.table(table)).to_pyarrow_table().to_pylist()
        per = Counter((r["user_id"], r[day_of].date()) for r in rows)
        sent += len(per)
        suppressed += sum(n - 1 for n in per.values())
    return sent, suppressed


@pytest.mark.slow
def test_the_sample_is_delivered_once_per_row_and_channel(spark, sample_lake, tmp_path, receiver, smtp):
    """The stream recorded the sample's notices while every channel was off; ``notify``
    sends them: one Slack message per alert and fraud flag, one email per offer and reminder
    within the limits. A second run sends nothing."""
    inbox, port = smtp
    s = lake_copy(sample_lake, tmp_path)
    pending = Counter(r["status"] for r in _outbox(s))
    assert set(pending) <= {"pending", "suppressed"} and pending["pending"] > 0

    done = run_notify(s, environ=_env(receiver, port))
    alerts = DeltaTable(s.table("gold/alerts")).to_pyarrow_table().num_rows
    assert alerts > 0
    assert len(receiver.bodies(f"/slack/{SECRET}")) == alerts + len(TRUTH["fraud_bursts"])
    emails, suppressed = _expected_emails(s)
    assert len(inbox.messages) == emails
    assert done.outcomes[("email", "sent")] == emails
    statuses = Counter((r["channel"], r["status"]) for r in _outbox(s))
    assert statuses == {("slack", "sent"): alerts + len(TRUTH["fraud_bursts"]), ("email", "sent"): emails,
                        ("email", "suppressed"): suppressed}
    # Every email went to the user's address, once.
    assert len({m["Message-ID"] for m in inbox.messages}) == emails
    assert all(m["To"].endswith("@example.com") and m["From"] == "funnelhouse@example.com"
               for m in inbox.messages)

    again = run_notify(s, environ=_env(receiver, port))
    assert sum(again.outcomes.values()) == 0
    assert len(inbox.messages) == emails and len(receiver.posts) == alerts + len(TRUTH["fraud_bursts"])


def test_a_receiver_that_is_down_is_retried_then_failed_then_resent(spark, sample_lake, tmp_path,
                                                                   receiver, caplog, monkeypatch):
    s = lake_copy(sample_lake, tmp_path)
    shutil.rmtree(s.table("ops/notifications"))  # the stream's pending notices: not this test's routes
    config = tmp_path / "webhook.yaml"
    config.write_text("notify:\n  routes: {dropoff: [slack, webhook], fraud: [], offer: [], reminder: []}\n"
                      "  max_attempts: 2\n  backoff: 10 milliseconds\n")
    from pipelines.config import load_settings
    s = load_settings(config, overrides={"lake": s.lake}, environ={}, local=False)
    env = {"FUNNELHOUSE_SLACK_WEBHOOK_URL": f"{receiver.url}/slack/{SECRET}",
           "FUNNELHOUSE_WEBHOOK_URL": f"{receiver.url}/hook"}
    alerts = DeltaTable(s.table("gold/alerts")).to_pyarrow_table().num_rows
    receiver.down = True
    with caplog.at_level(logging.WARNING):
        run_notify(s, environ=env)
    assert len(receiver.posts) == 2 * 2 * alerts  # two channels, two attempts each
    failed = [r for r in _outbox(s) if r["kind"] == "dropoff"]
    assert {(r["status"], r["attempts"]) for r in failed} == {("failed", 2)}
    assert {r["last_error"] for r in failed} == {"slack: HTTP 503 unavailable", "webhook: HTTP 503"}
    hooks = receiver.bodies("/hook")
    assert {b["notification_id"] for b in hooks} == {r["notification_id"] for r in failed
                                                     if r["channel"] == "webhook"}

    receiver.down = False
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["notify", "retry", "--config", str(config), "--lake", s.lake])
    assert result.exit_code == 0, result.output
    assert {(r["status"], r["attempts"]) for r in _outbox(s) if r["kind"] == "dropoff"} == {("sent", 3)}
    assert len(receiver.posts) == 2 * 2 * alerts + 2 * alerts
    # The Slack URL is a secret: never in the logs, the output or the outbox.
    assert SECRET not in caplog.text and SECRET not in result.output
    assert all(SECRET not in json.dumps(r, default=str) for r in _outbox(s))


def test_a_channel_configured_in_part_is_a_clear_start_up_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNNELHOUSE_SMTP_HOST", "127.0.0.1")
    monkeypatch.delenv("FUNNELHOUSE_SMTP_FROM", raising=False)
    result = CliRunner().invoke(app, ["notify", "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 2
    assert "set FUNNELHOUSE_SMTP_FROM" in result.output
    # The job reports it with every other preflight problem (here: no landing folder).
    result = CliRunner().invoke(app, ["run", "--lake", str(tmp_path / "lake"), "--available-now",
                                      "--input", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "set FUNNELHOUSE_SMTP_FROM" in result.output
    assert "the landing folder" in result.output


@pytest.mark.slow
def test_the_stream_sends_each_batchs_notices_and_a_replay_sends_nothing(spark, lake_settings, receiver,
                                                                        smtp, monkeypatch):
    inbox, port = smtp
    for name, value in _env(receiver, port).items():
        monkeypatch.setenv(name, value)
    s = lake_settings
    copy_sample(s.input)
    run_available_now(spark, s)
    rows = _outbox(s)
    assert rows and {r["status"] for r in rows} <= {"sent", "suppressed"}
    sent = Counter(r["channel"] for r in rows if r["status"] == "sent")
    assert sent["email"] == len(inbox.messages) == _expected_emails(s)[0]
    assert sent["slack"] == len(receiver.posts) > len(TRUTH["fraud_bursts"])

    from pathlib import Path

    from test_gold_stream import forget_last_batches

    from pipelines.streams import CHECKPOINTS, QUERY
    forget_last_batches(Path(s.checkpoint(CHECKPOINTS[QUERY])), 1)
    run_available_now(spark, s, [QUERY])
    assert len(inbox.messages) == sent["email"] and len(receiver.posts) == sent["slack"]


def test_email_upgrades_to_starttls_and_logs_in_when_the_server_offers_it(tmp_path):
    """A real aiosmtpd server that offers STARTTLS (a throwaway self-signed certificate) and
    requires AUTH over TLS: the sender upgrades, logs in with the configured user, then sends."""
    import ssl
    import subprocess

    from aiosmtpd.smtp import AuthResult, LoginPassword

    from pipelines.notify.channels import senders

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert), "-days", "1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"fh", b"pw")
        logins.append((mechanism, ok, session.ssl is not None))
        return AuthResult(success=ok)

    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context,
                            require_starttls=True, auth_required=True, authenticator=authenticator)
    controller.start()
    try:
        email = senders({"FUNNELHOUSE_SMTP_HOST": "127.0.0.1", "FUNNELHOUSE_SMTP_PORT": str(port),
                         "FUNNELHOUSE_SMTP_FROM": "funnelhouse@example.com", "FUNNELHOUSE_SMTP_USER": "fh",
                         "FUNNELHOUSE_SMTP_PASSWORD": "pw"}, timeout=10)["email"]
        [reminder] = notices("reminder", [REMINDER], NotifySettings())
        email.send(reminder)
        email.close()
    finally:
        controller.stop()
    assert [ok and tls for _, ok, tls in logins] == [True]
    [message] = inbox.messages
    assert (message["To"], message["Subject"]) == ("u2@example.com", "You left something in your cart")
    assert "  - p_001\n  - p_002" in message.get_body(("plain",)).get_content().replace("\r\n", "\n")


@pytest.mark.parametrize("append", [True, False], ids=["local lake: append", "object store: merge"])
def test_a_notice_recorded_twice_is_one_row_and_limits_count_across_calls(tmp_path, append):
    """The outbox inserts only ids it lacks, by an append under the gold lease (a local lake)
    or a MERGE (an object store, no lease); a limit counts what earlier calls recorded."""
    from pipelines.notify.outbox import open_outbox

    s = NotifySettings(limits={"offer": 1})
    box = open_outbox(str(tmp_path / "lake"), s)
    box.append = append
    offer = {"offer_id": "o1", "user_id": "u1", "campaign_id": "c1", "tracking_id": "t1",
             "click_time": datetime(2026, 11, 2, 10), "due_time": datetime(2026, 11, 2, 10, 10)}
    first = notices("offer", [offer], s)
    assert first  # routed to at least one channel by default
    assert box.record(first) == len(first) == len(s.routes["offer"])
    assert box.record(first) == 0  # a replay: nothing twice
    second = notices("offer", [offer | {"offer_id": "o2"}], s)  # the same user, the same day
    assert box.record(second) == len(second)
    rows = DeltaTable(str(tmp_path / "lake" / "ops/notifications")).to_pyarrow_table().to_pylist()
    assert Counter(r["status"] for r in rows) == {"pending": len(first), "suppressed": len(second)}
    assert sorted(r["source_id"] for r in rows) == sorted(["o1"] * len(first) + ["o2"] * len(second))


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = arrow_schema(next(t for t in tables.GOLD_STREAM if t.name == name))
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


ODD = 'an "odd" id, with ünïcode \\ and a / slash'


@pytest.mark.parametrize(("kind", "table", "rows"), [
    ("fraud", "gold/fraud_flags", [FLAG, FLAG | {"flag_id": "f2", "entity_type": "ip", "rule": "R3",
                                                 "entity_id": ODD, "evidence_event_ids": ["x"],
                                                 "window_seconds": 10.0, "measure": "quantity"}]),
    ("offer", "gold/retarget_offers", [OFFER, OFFER | {
        "offer_id": "o2", "user_id": ODD, "click_time": datetime(2026, 11, 3, 23, 59, 59, 999999)}]),
    ("reminder", "gold/cart_reminders", [REMINDER, REMINDER | {"reminder_id": "r2", "products": [],
                                                               "tracking_id": ODD}]),
])
def test_a_batch_of_notices_built_column_by_column_is_the_same_as_one_by_one(kind, table, rows):
    """The stream builds a micro-batch's notices column by column (``notice_frame``); each must
    be the notice ``notices`` builds from the row alone, payload included."""
    from pipelines.notify.messages import notice_frame

    s = NotifySettings(routes={"fraud": ["slack", "email"], "offer": ["email", "webhook"],
                               "reminder": ["email"]})
    gold = _table(table, rows)
    frame = notice_frame(kind, gold, s)
    one_by_one = notices(kind, gold.to_pylist(), s)
    assert len(frame) == len(one_by_one) == len(rows) * len(s.routes[kind])
    got = {r["notification_id"]: r for r in frame.to_dict("records")}
    for n in one_by_one:
        row = got[n.notification_id]
        columns = ("kind", "channel", "source_id", "recipient", "subject", "day")
        assert tuple(row[c] for c in columns) == tuple(getattr(n, c) for c in columns)
        assert json.loads(row["payload"]) == json.loads(json.dumps(n.payload, default=str))


def _offer(i: str, user: str = "u1", day: int = 2) -> dict:
    """An offer row of user ``user`` due on November ``day``."""
    return {"offer_id": i, "user_id": user, "campaign_id": "c1", "tracking_id": "t",
            "click_time": datetime(2026, 11, day, 10), "due_time": datetime(2026, 11, day, 10, 10)}


def test_a_limit_counts_the_recipients_earlier_notices_and_those_in_the_same_call(tmp_path):
    """Limit 2 offers per recipient per day: one already recorded, then three more in one call
    for the same day (one pending, two suppressed), one for the next day, and one for
    someone else: each of those two pending."""
    from pipelines.notify.outbox import open_outbox

    s = NotifySettings(limits={"offer": 2}, routes={"offer": ["email"]})
    box = open_outbox(str(tmp_path / "lake"), s)

    assert box.record(notices("offer", [_offer("a")], s)) == 1
    batch = [_offer("b"), _offer("c"), _offer("d"), _offer("e", day=3), _offer("f", user="u2")]
    assert box.record(notices("offer", batch, s)) == 5
    rows = DeltaTable(str(tmp_path / "lake" / "ops/notifications")).to_pyarrow_table().to_pylist()
    status = Counter((r["recipient"], r["created_date"].day, r["status"]) for r in rows)
    assert status == {("u1@example.com", 2, "pending"): 2, ("u1@example.com", 2, "suppressed"): 2,
                      ("u1@example.com", 3, "pending"): 1, ("u2@example.com", 2, "pending"): 1}
    assert {r["last_error"] for r in rows if r["status"] == "suppressed"} == {
        "limit: at most 2 offer per recipient per day"}


def _statuses(lake) -> Counter:
    rows = DeltaTable(str(lake / "ops/notifications")).to_pyarrow_table().to_pylist()
    return Counter((r["source_id"], r["status"]) for r in rows)


def test_a_limit_counts_what_another_writer_recorded_between_two_records(tmp_path):
    """The stream's outbox keeps the limits' counts between micro-batches; notices another
    writer (``funnelhouse notify``) recorded in between still count."""
    from pipelines.notify.outbox import open_outbox

    s = NotifySettings(limits={"offer": 2}, routes={"offer": ["email"]})
    stream, job = open_outbox(str(tmp_path / "lake"), s), open_outbox(str(tmp_path / "lake"), s)
    assert stream.record(notices("offer", [_offer("a")], s)) == 1
    assert job.record(notices("offer", [_offer("b")], s)) == 1  # the second of the day
    assert stream.record(notices("offer", [_offer("c"), _offer("d", user="u2")], s)) == 2
    assert _statuses(tmp_path / "lake") == {("a", "pending"): 1, ("b", "pending"): 1,
                                            ("c", "suppressed"): 1, ("d", "pending"): 1}


def test_the_stream_reads_no_outbox_rows_for_notices_of_new_gold_rows(tmp_path, monkeypatch):
    """Once the limits' counts are read, a record of notices whose gold rows were new
    (``fresh``) reads nothing back: its cost does not grow with the day's notices. The counts
    move on with its own inserts, and a later replay (not fresh) still records nothing twice."""
    from pipelines.notify.outbox import open_outbox

    s = NotifySettings(limits={"offer": 2}, routes={"offer": ["email"]})
    box = open_outbox(str(tmp_path / "lake"), s)
    assert box.record(notices("offer", [_offer("a")], s)) == 1
    reads = []
    real = box.read
    monkeypatch.setattr(box, "read", lambda *a, **k: reads.append(a) or real(*a, **k))
    frame = notice_frame("offer", _table("gold/retarget_offers", [_offer("b"), _offer("c")]), s)
    assert box.record_frame(frame, fresh=True).column("status").to_pylist() == ["pending", "suppressed"]
    assert reads == []
    assert box.record_frame(frame).num_rows == 0  # a replay reads the ids, and adds nothing
    assert len(reads) == 1
    assert _statuses(tmp_path / "lake") == {("a", "pending"): 1, ("b", "pending"): 1, ("c", "suppressed"): 1}


def test_a_limit_counts_earlier_notices_of_every_day_in_one_call(tmp_path):
    """A call with notices of more days than the outbox keeps counts for (``funnelhouse
    notify`` over a backfill) still counts each day's earlier notices; an older kept day
    makes way."""
    from pipelines.notify.outbox import KEPT_DAYS, open_outbox

    s = NotifySettings(limits={"offer": 1}, routes={"offer": ["email"]})
    box = open_outbox(str(tmp_path / "lake"), s)

    assert box.record(notices("offer", [_offer("a", day=1), _offer("b", day=2)], s)) == 2
    days = range(2, 3 + KEPT_DAYS)  # day 2 holds one already; more days than are kept
    assert box.record(notices("offer", [_offer(f"x{d}", day=d) for d in days], s)) == len(days)
    assert box.record(notices("offer", [_offer("y1", day=1)], s)) == 1
    assert _statuses(tmp_path / "lake") == {
        ("a", "pending"): 1, ("b", "pending"): 1, ("x2", "suppressed"): 1, ("y1", "suppressed"): 1,
        **{(f"x{d}", "pending"): 1 for d in days if d != 2}}
