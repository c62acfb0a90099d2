"""The delivery job: ``funnelhouse notify`` (catch up) and ``funnelhouse notify retry``.

The streaming job delivers each gold micro-batch's notices itself (``streams.gold.GoldBatch``);
this job is for what it could not: notices of rows a backfill inserted, notices recorded
while a channel was off, and (``retry``) notices that failed. No Spark: delta-rs reads the
gold tables and the outbox.
"""

from __future__ import annotations

from collections.abc import Mapping

from deltalake import DeltaTable

from pipelines.config import Settings
from pipelines.io.delta_rs import read
from pipelines.io.lease import lease
from pipelines.io.ledger import rs_uri
from pipelines.notify.channels import channels
from pipelines.notify.messages import KINDS, SOURCE_TABLE
from pipelines.notify.outbox import Delivery, open_outbox, record_rows


def run_notify(s: Settings, retry: bool = False, environ: Mapping[str, str] | None = None) -> Delivery:
    """Catch up (record the notices of every gold row the outbox lacks, then send all
    ``pending``), or with ``retry`` send the ``failed`` ones again."""
    on = channels(s.notify, environ)
    box = open_outbox(s.lake, s.notify)
    if not retry:
        with lease(s.lake, who="notify"):  # recorders hold it: the outbox appends (notify/outbox.py)
            for kind in KINDS:
                path = rs_uri(s.table(SOURCE_TABLE[kind]))
                if DeltaTable.is_deltatable(path):  # the gold stream may not have run yet
                    record_rows(box, kind, read(path))
    return box.deliver(box.due(("failed",) if retry else ("pending",)), on)
