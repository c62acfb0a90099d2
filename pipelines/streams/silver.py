"""The silver part of the stream's micro-batch: parsed rows -> dedupe (state) ->
``silver/events`` + ``silver/quarantine``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from pipelines import metrics
from pipelines import tables as T
from pipelines.common import Transform, epoch_ms
from pipelines.config import Settings
from pipelines.geo import Locator, read_networks
from pipelines.gold.sessions import hash_keys
from pipelines.io.delta_rs import Commit, arrow_schema, max_stat, to_arrow
from pipelines.privacy import ip_salt
from pipelines.quality import Quality, drop_reason, dropped_to_quarantine
from pipelines.silver import BY_BATCH, address_values, enrich_arrow, mark_late_arrow, stream_rows
from pipelines.stateful.dedupe import Dedupe
from pipelines.streams.base import Handler, counts

log = logging.getLogger(__name__)

# The quarantine's own collected columns, which the valid rows carry as nulls: left behind
# before silver filters them.
QUARANTINE_ONLY = sorted(set(T.SILVER_QUARANTINE.columns) - set(T.SILVER_EVENTS.columns) - set(BY_BATCH))
# The quarantine's columns the query collects (the driver stamps ``quarantine_time``).
QUARANTINE_COLLECTED = [c for c in T.SILVER_QUARANTINE.columns if c not in BY_BATCH]


class SilverStep(Handler):
    """The silver part of the stream's micro-batch (``streams/pipeline.py``): its collected
    rows -> ``silver/events`` (redeliveries dropped, ``stateful/dedupe.py``; then each distinct
    address of the kept events located and pseudonymized once, ``silver.enrich_arrow``: the
    plain dotted quads all at once, any other value one at a time and remembered across
    batches, ``silver.address_values``) and
    ``silver/quarantine``, with the quality suite; returns the events it kept, for gold.

    Events at or before the watermark (``event_watermark`` of the newest on-time event time
    seen, kept in gold's state) are kept with ``late`` set. Both appends are marked with the
    batch (``io/ledger.py``), so a replayed batch adds nothing.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "silver")
        self.events = T.ensure(spark, s.lake, T.SILVER_EVENTS)
        self.quarantine = T.ensure(spark, s.lake, T.SILVER_QUARANTINE)
        T.ensure(spark, s.lake, T.QUALITY_RESULTS)
        self.quality = Quality(s.lake, "silver_events", s.quality, "silver") if s.quality.enabled else None
        self.addresses = address_values(Locator(read_networks(s.geo.ip_locations)), ip_salt(s.lake))
        self.dedupe = Dedupe(self.checkpoint, s.stream.watermark_delay)

    def first_latest(self, batch_id: int) -> int | None:
        """On the query's first micro-batch over a lake whose silver already holds events (a
        backfill ran first): their newest event time (epoch ms, from the files' statistics)."""
        if batch_id == 0 and self.ledger.last(self.events, self.app_id()) < 0:
            return epoch_ms(max_stat(self.events, "event_time"))
        return None

    def projection(self) -> Transform:
        """Bronze rows -> ``stream_rows``: parsed, with gold's hash keys, ``ip`` and the quality
        predicates that do not move with the clock (the query's definition: built once, and
        the same for every micro-batch)."""
        return stream_rows(hash_keys(), self.quality.fixed_breaks() if self.quality else {})

    def apply(self, spark: SparkSession, rows: pa.Table, batch_id: int, watermark: datetime | None,
              now: datetime) -> tuple[pa.Table, Callable[[], None]]:
        """The collected ``rows`` -> silver's new events (with the hash keys), returned with the
        batch's appends to ``silver/events`` and ``silver/quarantine``, which the caller runs
        (``PipelineBatch``: beside gold). The quality suite judges the batch here, first."""
        valid = pc.is_null(rows["reason"])
        events = rows.drop_columns(QUARANTINE_ONLY).filter(self._kept(rows, valid, batch_id))
        events = enrich_arrow(events, self.addresses)  # only the events silver keeps
        events = mark_late_arrow(events, watermark)
        rejected = _stamped(rows.select(QUARANTINE_COLLECTED).filter(pc.invert(valid)), now)
        commit = Commit(self.app_id(), batch_id, self.ledger)
        if self.quality is not None:  # the GX suite; may raise QualityFailure ("fail" policy)
            events = self.quality.with_breaks(events, now)  # those that move with the clock
            drops = self.quality.judge(self.quality.count_arrow(events, now), commit, now)
            if drops:
                reason = drop_reason(events, drops)
                rejected = pa.concat_tables([rejected.cast(arrow_schema(T.SILVER_QUARANTINE)),
                                             self._dropped(spark, events, reason)])
                events = events.filter(pc.is_null(reason))
        late = pc.sum(events["late"]).as_py() or 0
        metrics.LATE.inc(late)
        metrics.set_watermark("silver", watermark)
        metrics.set_state("silver", *self.dedupe.size())
        if late:
            log.info("batch %d: %d events at or behind the watermark %s", batch_id, late, watermark)
        return events, partial(self._append, commit, events.select(T.SILVER_EVENTS.columns),
                               rejected.select(T.SILVER_QUARANTINE.columns))

    def _append(self, commit: Commit, events: pa.Table, quarantine: pa.Table) -> None:
        """One micro-batch's rows -> ``silver/events`` and ``silver/quarantine``."""
        if commit.append(events, self.events, T.SILVER_EVENTS):
            metrics.ROWS.labels(T.SILVER_EVENTS.name).inc(events.num_rows)
        if commit.append(quarantine, self.quarantine, T.SILVER_QUARANTINE):
            metrics.ROWS.labels(T.SILVER_QUARANTINE.name).inc(quarantine.num_rows)
            for reason, n in counts(quarantine, "reason").items():
                metrics.QUARANTINED.labels(reason).inc(n)

    def _kept(self, rows: pa.Table, valid: pa.ChunkedArray, batch_id: int) -> np.ndarray:
        """Which collected rows silver keeps: the valid ones the dedupe lets in (one mask,
        so the wide rows are filtered once)."""
        at = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
        first = self.dedupe.apply(rows.select(["event_id", "ingest_time"]).take(at), batch_id)
        keep = np.zeros(rows.num_rows, bool)
        keep[at[first.to_numpy(zero_copy_only=False)]] = True
        return keep

    @staticmethod
    def _dropped(spark: SparkSession, events: pa.Table, reason: pa.Array) -> pa.Table:
        """The events a ``drop`` check rejected, as quarantine rows (``dropped_to_quarantine``:
        rare, so a second, small Spark job)."""
        kept = pc.is_valid(reason)
        dropped = events.select(T.SILVER_EVENTS.columns).filter(kept)
        dropped = dropped.append_column("_reason", reason.filter(kept))
        return to_arrow(dropped_to_quarantine(spark.createDataFrame(dropped)), T.SILVER_QUARANTINE)


def _stamped(rejected: pa.Table, now: datetime) -> pa.Table:
    """The collected rejects with ``quarantine_time``: ``now``, when the micro-batch started."""
    stamp = pa.scalar(now, arrow_schema(T.SILVER_QUARANTINE).field("quarantine_time").type)
    rejected = rejected.append_column("quarantine_time", pa.repeat(stamp, rejected.num_rows))
    return rejected.select(T.SILVER_QUARANTINE.columns)
