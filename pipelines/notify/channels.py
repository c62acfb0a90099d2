"""The senders, built from the environment only (never from config files):

- Slack: ``FUNNELHOUSE_SLACK_WEBHOOK_URL`` (slack-sdk's ``WebhookClient``, Block Kit);
- webhook: ``FUNNELHOUSE_WEBHOOK_URL`` (a JSON POST);
- email: ``FUNNELHOUSE_SMTP_HOST`` and ``FUNNELHOUSE_SMTP_FROM`` (required),
  ``FUNNELHOUSE_SMTP_PORT`` (25), ``FUNNELHOUSE_SMTP_USER`` and ``FUNNELHOUSE_SMTP_PASSWORD``
  (optional, together); STARTTLS whenever the server offers it.

A channel with none of its variables set is off: its notices wait in the outbox as
``pending``. One with some but not all of its required variables is a start-up error that
names what is missing. Errors raised by a send never carry a URL or a password.
"""

from __future__ import annotations

import json
import os
import smtplib
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

from slack_sdk.webhook import WebhookClient

from pipelines.config import NotifySettings
from pipelines.notify.messages import Notice, email_message, slack_message, webhook_body

SLACK_URL = "FUNNELHOUSE_SLACK_WEBHOOK_URL"
WEBHOOK_URL = "FUNNELHOUSE_WEBHOOK_URL"
SMTP_HOST, SMTP_FROM, SMTP_PORT = "FUNNELHOUSE_SMTP_HOST", "FUNNELHOUSE_SMTP_FROM", "FUNNELHOUSE_SMTP_PORT"
SMTP_USER, SMTP_PASSWORD = "FUNNELHOUSE_SMTP_USER", "FUNNELHOUSE_SMTP_PASSWORD"
VARIABLES = {"slack": (SLACK_URL,), "webhook": (WEBHOOK_URL,),
             "email": (SMTP_HOST, SMTP_FROM, SMTP_PORT, SMTP_USER, SMTP_PASSWORD)}


class ChannelConfigError(ValueError):
    """A channel is configured in part: the message names the missing variable."""


class SendError(RuntimeError):
    """A channel refused or could not take a notice. The message is safe to log and store."""


class Sender(Protocol):
    def send(self, notice: Notice) -> None: ...
    def close(self) -> None: ...


@dataclass
class Slack:
    url: str
    timeout: float

    def send(self, notice: Notice) -> None:
        try:
            response = WebhookClient(self.url, timeout=int(max(1, self.timeout))).send_dict(
                slack_message(notice))
        except OSError as err:  # connection refused, timeout: no URL in the message
            raise SendError(f"slack: {type(err).__name__}") from None
        if response.status_code != 200:
            raise SendError(f"slack: HTTP {response.status_code} {response.body[:200]}")

    def close(self) -> None:
        pass


@dataclass
class Webhook:
    url: str
    timeout: float

    def send(self, notice: Notice) -> None:
        body = json.dumps(webhook_body(notice), sort_keys=True, default=str).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": notice.notification_id})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as err:
            raise SendError(f"webhook: HTTP {err.code}") from None
        except OSError as err:
            raise SendError(f"webhook: {type(err).__name__}") from None

    def close(self) -> None:
        pass


@dataclass
class Email:
    host: str
    port: int
    sender: str
    user: str | None
    password: str | None
    timeout: float
    _smtp: smtplib.SMTP | None = field(default=None, repr=False)

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:  # one connection per delivery run
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls()
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password or "")
            self._smtp = smtp
        return self._smtp

    def send(self, notice: Notice) -> None:
        subject, text, html = email_message(notice)
        message = EmailMessage()
        message["Subject"], message["From"], message["To"] = subject, self.sender, notice.recipient
        message["Message-ID"] = f"<{notice.notification_id}@funnelhouse>"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        try:
            self._connection().send_message(message)
        except smtplib.SMTPAuthenticationError as err:
            self.close()
            raise SendError(f"email: authentication failed ({err.smtp_code})") from None
        except smtplib.SMTPResponseException as err:
            self.close()
            raise SendError(f"email: SMTP {err.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as err:
            self.close()
            raise SendError(f"email: {type(err).__name__}") from None

    def close(self) -> None:
        if self._smtp is not None:
            with suppress(OSError, smtplib.SMTPException):
                self._smtp.quit()
            self._smtp = None


def senders(environ: Mapping[str, str], timeout: float) -> dict[str, Sender]:
    """The channels that are on, from ``environ``; raises ``ChannelConfigError`` for one set in part."""
    out: dict[str, Sender] = {}
    if environ.get(SLACK_URL):
        out["slack"] = Slack(environ[SLACK_URL], timeout)
    if environ.get(WEBHOOK_URL):
        out["webhook"] = Webhook(environ[WEBHOOK_URL], timeout)
    smtp = {name: environ.get(name) for name in VARIABLES["email"]}
    if any(smtp.values()):
        for name in (SMTP_HOST, SMTP_FROM):
            if not smtp[name]:
                raise ChannelConfigError(f"email is configured in part: set {name} (or unset the other "
                                         f"FUNNELHOUSE_SMTP_* variables to turn email off)")
        if bool(smtp[SMTP_USER]) != bool(smtp[SMTP_PASSWORD]):
            missing = SMTP_PASSWORD if smtp[SMTP_USER] else SMTP_USER
            raise ChannelConfigError(f"email is configured in part: set {missing}")
        try:
            port = int(smtp[SMTP_PORT] or 25)
        except ValueError:
            raise ChannelConfigError(f"{SMTP_PORT} must be a port number") from None
        out["email"] = Email(smtp[SMTP_HOST], port, smtp[SMTP_FROM], smtp[SMTP_USER],  # type: ignore[arg-type]
                             smtp[SMTP_PASSWORD], timeout)
    return out


def channels(s: NotifySettings, environ: Mapping[str, str] | None = None) -> dict[str, Sender]:
    """``senders`` from the process environment (or ``environ``) with the configured timeout."""
    return senders(os.environ if environ is None else environ, s.timeout.total_seconds())
