"""Delivery of the gold layer's notices: drop-off alerts and fraud flags to on-call (Slack by
default), retargeting offers and cart reminders to users (email by default).

- ``messages``: pure functions from a gold row to a ``Notice`` per routed channel, and from a
  notice to each channel's message (Slack Block Kit, email text and HTML, webhook JSON);
- ``channels``: the senders (slack-sdk's ``WebhookClient``, ``smtplib``, a JSON POST), built
  from the environment only;
- ``outbox``: ``ops/notifications``, where every notice is recorded before it is sent, and
  ``deliver``, which sends what is pending with retries and records the outcome.

docs/alerts.md describes routing, templates, limits and the guarantees.
"""
