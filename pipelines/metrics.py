"""Prometheus metrics of the streaming job, every one named ``funnelhouse_*``.

Two sources feed one registry (``REGISTRY``):

- **Per query**, from Spark: a ``StreamingQueryListener`` reads each micro-batch's progress
  (input and processed rows/s, batch duration, rows, state rows and memory, rows dropped by
  the watermark, the batch id). Labelled ``query`` (bronze, silver, gold).
- **Per table and business**, from the ``foreachBatch`` bodies (``pipelines/streams/``), which know
  what Spark does not: rows committed per table, quarantine reasons, late events, the
  event-time watermark each layer keeps itself, sessions reaching each step and conversion in
  the newest funnel window, alerts, fraud flags, offers, reminders, notices by status, and
  failed quality expectations.

``funnelhouse run`` serves the registry on ``metrics.host:metrics.port`` (default
127.0.0.1:9108); a ``--available-now`` run ends too soon to be scraped, so it pushes its final
values to ``metrics.pushgateway`` when that is set. Counters start at zero with the process,
as Prometheus expects (``rate()`` and ``increase()`` handle the reset). docs/observability.md
lists every metric.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server
from pyspark.sql.streaming import StreamingQueryListener

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
Q = ("query",)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = Q) -> Gauge:
    return Gauge(f"funnelhouse_{name}", doc, labels, registry=REGISTRY)


def _counter(name: str, doc: str, labels: tuple[str, ...] = Q) -> Counter:
    return Counter(f"funnelhouse_{name}", doc, labels, registry=REGISTRY)


# -- per query, from the listener --------------------------------------------------------------
INPUT_RATE = _gauge("input_rows_per_second", "Rows/s arriving at the query's source (last batch).")
PROCESSED_RATE = _gauge("processed_rows_per_second", "Rows/s the query processed (last batch).")
BATCH_SECONDS = _gauge("batch_duration_seconds", "Wall time of the last micro-batch.")
BATCH_ROWS = _gauge("batch_rows", "Input rows of the last micro-batch.")
INPUT_ROWS = _counter("input_rows", "Input rows of every micro-batch since the process started.")
BATCHES = _counter("batches", "Micro-batches completed since the process started.")
LAST_BATCH = _gauge("last_batch_id", "Id of the last completed micro-batch (from the checkpoint).")
STATE_ROWS = _gauge("state_rows", "Rows the stream holds as state (silver: ids in the dedupe "
                    "window; gold: the open sessions' events).")
STATE_BYTES = _gauge("state_memory_bytes", "Bytes of that state (silver: Arrow buffers; gold: the "
                     "open sessions' Arrow buffers, open fraud bursts and pending clicks as stored).")
DROPPED = _counter("rows_dropped_by_watermark", "Rows Spark's watermark dropped (state operators).")
LAST_PROGRESS = _gauge("last_progress_timestamp_seconds", "Wall time of the query's last progress.")

# -- per layer, from the batch bodies ----------------------------------------------------------
ROWS = _counter("rows_committed", "Rows committed per table by the streams.", ("table",))
QUARANTINED = _counter("quarantine_rows", "Rows sent to silver/quarantine, by reason.", ("reason",))
LATE = _counter("late_events", "Events at or behind silver's watermark (kept, flagged late).", ())
WATERMARK = _gauge("watermark_timestamp_seconds",
                   "The layer's event-time watermark (newest on-time event time - delay).")
WATERMARK_LAG = _gauge("watermark_lag_seconds", "Wall clock minus the layer's event-time watermark.")

# -- business, from the gold batch -------------------------------------------------------------
WINDOW_SESSIONS = _gauge("window_sessions_reached",
                         "Sessions reaching each step in the newest funnel window, per campaign.",
                         ("campaign_id", "step"))
WINDOW_CONVERSION = _gauge("window_conversion",
                           "Conversion from the step before, in the newest funnel window, per campaign.",
                           ("campaign_id", "step"))
CAMPAIGN_CLICKS = _gauge("campaign_clicks", "Clicks per campaign, all time (gold/campaign_performance).",
                         ("campaign_id",))
CAMPAIGN_PURCHASES = _gauge("campaign_purchases", "Purchases per campaign, all time.", ("campaign_id",))
CAMPAIGN_REVENUE = _gauge("campaign_revenue", "Revenue per campaign, all time.", ("campaign_id",))
ALERTS = _counter("alerts", "Drop-off alerts fired.", ("rule", "campaign_id"))
FRAUD_FLAGS = _counter("fraud_flags", "Fraud flags raised.", ("rule",))
OFFERS = _counter("retarget_offers", "Retarget offers made.", ())
REMINDERS = _counter("cart_reminders", "Cart reminders made.", ())
NOTICES = _counter("notifications", "Notices handled by the outbox, by outcome.", ("channel", "status"))
ANOMALIES = _counter("anomalous_sessions", "Closed sessions the champion model flagged, by version.",
                     ("model_version",))
QUALITY_FAILED = _counter("quality_expectations_failed", "Failed expectations per validated batch.",
                          ("suite", "expectation"))


def set_state(layer: str, rows: int, size: int) -> None:
    """The rows and bytes of state ``layer`` (silver, gold) holds after a micro-batch."""
    STATE_ROWS.labels(layer).set(rows)
    STATE_BYTES.labels(layer).set(size)


def set_watermark(query: str, watermark: datetime | None) -> None:
    """The layer's event-time watermark (naive UTC) and its lag behind the wall clock."""
    if watermark is None:
        return
    naive = watermark.replace(tzinfo=None) - (watermark.utcoffset() or timedelta(0))
    seconds = (naive - datetime(1970, 1, 1)).total_seconds()
    WATERMARK.labels(query).set(seconds)
    WATERMARK_LAG.labels(query).set(time.time() - seconds)


class ProgressListener(StreamingQueryListener):
    """Each query's progress -> the per-query metrics. Spark calls it on its listener thread."""

    def onQueryStarted(self, event) -> None:  # noqa: N802 - Spark's names
        pass

    def onQueryIdle(self, event) -> None:  # noqa: N802
        pass

    def onQueryTerminated(self, event) -> None:  # noqa: N802
        pass

    def onQueryProgress(self, event) -> None:  # noqa: N802
        try:
            record(event.progress)
        except Exception:  # noqa: BLE001 - a metric must never stop a stream
            log.exception("could not record a query's progress")


def record(p) -> None:
    """One ``StreamingQueryProgress`` -> the per-query metrics."""
    q = p.name or "unnamed"
    INPUT_RATE.labels(q).set(_num(p.inputRowsPerSecond))
    PROCESSED_RATE.labels(q).set(_num(p.processedRowsPerSecond))
    BATCH_SECONDS.labels(q).set(_num(p.batchDuration) / 1000)
    BATCH_ROWS.labels(q).set(p.numInputRows)
    INPUT_ROWS.labels(q).inc(p.numInputRows)
    BATCHES.labels(q).inc()
    LAST_BATCH.labels(q).set(p.batchId)
    LAST_PROGRESS.labels(q).set(time.time())
    ops = p.stateOperators or []
    if ops:  # Spark's state stores (the stream's own state reports itself: ``set_state``)
        STATE_ROWS.labels(q).set(sum(o.numRowsTotal for o in ops))
        STATE_BYTES.labels(q).set(sum(o.memoryUsedBytes for o in ops))
    dropped = sum(o.numRowsDroppedByWatermark for o in ops)
    if dropped:
        DROPPED.labels(q).inc(dropped)


def _num(x) -> float:
    return 0.0 if x is None or x != x else float(x)


def start(spark, host: str, port: int) -> None:
    """Serve ``/metrics`` on host:port and feed it from every query of ``spark``."""
    start_http_server(port, addr=host, registry=REGISTRY)
    spark.streams.addListener(ProgressListener())
    log.info("metrics on http://%s:%d/metrics", host, port)


def listen(spark) -> None:
    """Feed the per-query metrics without serving them (an ``--available-now`` run)."""
    spark.streams.addListener(ProgressListener())


def push(spark, gateway: str, job: str = "funnelhouse") -> None:
    """Push every metric's final value to a Pushgateway (``host:port`` or a URL), once Spark's
    listener bus has handed the last progress reports to the listener (it runs behind the
    queries, on its own thread)."""
    try:
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty(10_000)
    except Exception:  # noqa: BLE001 - an older or newer Spark: push what has arrived
        log.warning("could not wait for Spark's listener bus; the last batch's metrics may be missing")
    push_to_gateway(gateway, job=job, registry=REGISTRY)
    log.info("metrics pushed to %s (job %s)", gateway, job)
