"""``gold``: the on-time events of each silver micro-batch -> the session, fraud and offer
processors (state) -> every gold table, each micro-batch's changes committed with delta-rs.

Gold runs in the stream's one query (``streams/pipeline.py``), on the events silver kept
from the same micro-batch: one hop from arrival, no second read of the events and no second
query planning each micro-batch (docs/performance.md, "One query")."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from pipelines import metrics
from pipelines import tables as T
from pipelines.anomaly.features import with_history
from pipelines.anomaly.model import Champion, score_rows
from pipelines.common import epoch_ms, from_epoch_ms
from pipelines.config import Settings
from pipelines.gold import apply
from pipelines.gold.abandonment import product_count_deltas
from pipelines.gold.alerts import fire
from pipelines.gold.campaigns import campaign_total_deltas
from pipelines.gold.funnel import funnel_cell_deltas
from pipelines.gold.profiles import ip_deltas, profile_deltas
from pipelines.gold.reminders import as_reminders
from pipelines.gold.retarget import as_offers
from pipelines.gold.sessions import typed_session_rows
from pipelines.io.delta_rs import Commit, arrow_schema, from_pandas, max_stat
from pipelines.io.delta_rs import read as delta_read
from pipelines.io.folds import fold_arrow
from pipelines.notify.channels import channels
from pipelines.notify.messages import SOURCE_TABLE
from pipelines.notify.outbox import open_outbox, record_rows
from pipelines.quality import Quality
from pipelines.silver import event_watermark
from pipelines.stateful import fraud, offers, sessions
from pipelines.stateful.gold import Held, Processor, advance
from pipelines.stateful.state_files import StateFiles
from pipelines.steps import STEPS
from pipelines.streams.base import Handler, counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inserted:
    """A micro-batch's rows for one gold table, and whether each was new to it (``fresh``): a
    row gold has just inserted has no notice recorded yet, so the outbox reads no ids for them."""
    rows: pa.Table
    fresh: bool = False


def gold_processors(s: Settings) -> list[Processor]:
    """The gold query's state: open sessions, open fraud bursts, pending offers."""
    return [sessions.processor(s), fraud.processor(s.fraud), offers.processor(s.retarget)]


def processor_rows(events: pa.Table, processors: list[Processor]
                   ) -> tuple[dict[str, pd.DataFrame | pa.Table], int | None]:
    """A micro-batch of silver events, as the silver step kept them (with
    ``sessions.hash_keys``) -> each processor's rows (``Processor.rows``), and the batch's
    newest on-time event time (epoch ms; None when it holds none).

    Late events are left out (silver counted them); the newest ``event_time`` over the
    on-time rows is the batch's (the watermark's input)."""
    reads = list(dict.fromkeys(c for p in processors for c in p.reads))
    on_time = events.select(reads).filter(pc.invert(events["late"]))  # only what they read
    newest = pc.max(on_time["event_time"]).as_py() if on_time.num_rows else None
    rows = {p.name: p.rows(on_time) if p.arrow else p.rows(on_time).to_pandas() for p in processors}
    return rows, None if newest is None else _ms(newest.replace(tzinfo=None))


class GoldStep(Handler):
    """The gold part of the stream's micro-batch (``streams/pipeline.py``): the on-time events
    silver kept -> the processors -> every gold table.

    The processors' state lives in the query's checkpoint (``stateful/state_files.py``), with the
    newest on-time event time seen, from which ``event_watermark`` gives the batch's
    watermark: silver marks ``late`` by the same one. So a replayed or restarted batch sees
    exactly the state and watermark it saw the first time, and the tables' ledger skips what
    it already wrote.

    The sessions' rows go to ``gold/session_funnel`` on a thread of their own while, on the
    batch's thread, the aggregates their signed rows change are applied, then the windows the
    watermark closed are judged (for drop-off alerts), then reminders, fraud flags and
    offers, then the profiles of the users whose sessions closed or who were flagged; then
    the notices of all of it go to the outbox, and only then are the judged windows marked
    closed (the one cursor a table holds: a replay must find them still open). The state
    moves on once every table has its rows. Each table gets one delta-rs commit marked with
    the batch, or none when nothing in it changed.
    """

    def __init__(self, spark: SparkSession, s: Settings):
        super().__init__(s, "gold")
        self.paths = {t.name: T.ensure(spark, s.lake, t) for t in T.GOLD_STREAM}
        T.ensure(spark, s.lake, T.QUALITY_RESULTS)
        self.quality = Quality(s.lake, "campaign_funnel", s.quality, "gold") if s.quality.enabled else None
        self.processors = gold_processors(s)
        self.states = StateFiles(self.checkpoint, self.processors)
        self.saver = ThreadPoolExecutor(1, thread_name_prefix="gold-state")
        self.merger = ThreadPoolExecutor(1, thread_name_prefix="gold-sessions")
        self.snapshotter = ThreadPoolExecutor(1, thread_name_prefix="gold-snapshot")
        self.snapshotting: Future | None = None  # the complete state being written, off the batches
        self.saved: tuple[int, dict[str, Held], int | None] | None = None  # the state file's copy
        self.champion = (Champion(s.anomaly.model_name, s.lake, s.mlflow.tracking_uri,
                                  s.anomaly.refresh.total_seconds()) if s.anomaly.enabled else None)
        self.channels = channels(s.notify) if s.notify.enabled else {}  # a channel set in part: fail now
        self.outbox = open_outbox(s.lake, s.notify, spark) if s.notify.enabled else None
        if self.outbox is not None and self.channels:  # what a crash left between record and send
            log.info("pending notices from before this start: %s",
                     self.outbox.deliver(self.outbox.due(), self.channels))

    def start(self, batch_id: int) -> tuple[dict[str, Held], int | None]:
        """The state micro-batch ``batch_id`` starts from, and the newest on-time event time
        (epoch ms) seen before it: the watermark's input, for silver too. After the batch
        before it in this run, that is the state this step saved then, as it kept it (the
        open sessions' events stay an Arrow table); otherwise the newest file before it."""
        if self.saved is not None and self.saved[0] == batch_id - 1:
            _, held, latest = self.saved
            return dict(held), latest
        return self.states.load(batch_id)

    def apply(self, events: pa.Table, batch_id: int,
              held: dict[str, Held], latest: int | None) -> None:
        """Micro-batch ``batch_id``'s silver rows (``events``, late ones included), from the
        state ``start`` gave -> every gold table, then the state after it."""
        delay = self.s.stream.watermark_delay
        rows, newest = processor_rows(events, self.processors)
        before = event_watermark(from_epoch_ms(latest), delay)
        if newest is not None:
            latest = max(latest or newest, newest)
        watermark = event_watermark(from_epoch_ms(latest), delay)
        out: dict[str, pd.DataFrame] = {}
        for p in self.processors:
            frames, held[p.name] = advance(p, rows[p.name], held.get(p.name, Held()),
                                           _ms(before), _ms(watermark))
            if frames:
                out[p.name] = pd.concat(frames, ignore_index=True)
        staged = self.saver.submit(self.states.stage, batch_id, dict(held), latest)
        commit = Commit(self.app_id(), batch_id, self.ledger)
        changes = typed_session_rows(out["sessions"]) if "sessions" in out else None
        # ``gold/session_funnel``'s MERGE, the batch's largest write, runs on a thread of its
        # own beside the other tables' work (delta-rs writes without the GIL; no other table
        # reads it); the state moves on only once it has landed.
        merged = [] if changes is None else [self.merger.submit(
            apply.sessions, commit, session_table(changes), self.paths[T.SESSION_FUNNEL.name])]
        try:
            inserted = self._tables(batch_id, commit, out, changes, watermark)
        finally:
            wait(merged)
        for done in merged:
            done.result()
        state = staged.result()
        self.states.commit(state)  # after every table: the batch is applied
        self.saved = (batch_id, dict(held), latest)
        self._snapshot(batch_id, held)
        self._measure(inserted, watermark, changes is not None, held, state.size)

    def _tables(self, batch_id: int, commit: Commit, out: dict[str, pd.DataFrame],
                changes: pd.DataFrame | None, watermark: datetime | None) -> dict[str, Inserted]:
        """The processors' output -> every gold table but ``gold/session_funnel``, the notices
        of what was inserted recorded and sent; returns the inserted rows per table."""
        outputs = {p.name: p.output for p in self.processors}
        inserted: dict[str, Inserted] = {}
        closed, closing = None, None
        if changes is not None:
            closed = changes[changes["kind"] == "closed"]
            inserted |= self._sessions(commit, changes)
            inserted |= self._score(commit, closed)
        close = Commit(f"{self.app_id()}/close", batch_id, self.ledger)  # campaign_funnel's second commit
        if watermark is not None:
            closing, judged = self._judge_windows(close, watermark)
            inserted |= judged
        if "fraud" in out:
            flags = to_arrow_table(out["fraud"], outputs["fraud"]).select(T.FRAUD_FLAGS.columns)
            inserted[T.FRAUD_FLAGS.name] = self._insert(commit, flags, T.FRAUD_FLAGS)
        if "offers" in out:
            inserted[T.RETARGET_OFFERS.name] = self._insert(
                commit, as_offers(to_arrow_table(out["offers"], outputs["offers"])), T.RETARGET_OFFERS)
        self._profiles(commit, closed, out.get("fraud"))
        recorded = self._record(inserted)
        if closing is not None:  # only now: a replay of this batch judges these windows again
            apply.mark_closed(close, closing, self.paths[T.CAMPAIGN_FUNNEL.name])
        self._deliver(batch_id, recorded)
        return inserted

    def _snapshot(self, batch_id: int, held: dict[str, Held]) -> None:
        """Every ``SNAPSHOT_EVERY`` batches, the complete state in the background; one at a
        time. A failed one is logged: the files hold only changes until one lands, and a
        batch writes its file whole when none has for ``MAX_DEPTH`` files."""
        running = self.snapshotting
        if running is not None and running.done() and running.exception() is not None:
            log.warning("gold state snapshot failed: %s", running.exception())
        if self.states.snapshot_due(batch_id) and (running is None or running.done()):
            self.snapshotting = self.snapshotter.submit(self.states.snapshot, batch_id, dict(held))

    def _measure(self, inserted: dict[str, Inserted], watermark: datetime | None, sessions: bool,
                 held: dict[str, Held], state_bytes: int) -> None:
        """The batch's business metrics (``metrics.py``): what it inserted, the watermark, and
        when sessions changed, the newest funnel window and the campaign totals as they are now."""
        metrics.set_watermark("gold", watermark)
        metrics.set_state("gold", held_events(held), state_bytes)
        for name, new in inserted.items():
            metrics.ROWS.labels(name).inc(new.rows.num_rows)
        if T.ALERTS.name in inserted:
            for a in inserted[T.ALERTS.name].rows.select(["rule", "campaign_id"]).to_pylist():
                metrics.ALERTS.labels(a["rule"], a["campaign_id"]).inc()
        if T.FRAUD_FLAGS.name in inserted:
            for rule, n in counts(inserted[T.FRAUD_FLAGS.name].rows, "rule").items():
                metrics.FRAUD_FLAGS.labels(rule).inc(n)
        for table, counter in ((T.RETARGET_OFFERS, metrics.OFFERS), (T.CART_REMINDERS, metrics.REMINDERS)):
            if table.name in inserted:
                counter.inc(inserted[table.name].rows.num_rows)
        if sessions:
            funnel_metrics(self.paths[T.CAMPAIGN_FUNNEL.name], self.paths[T.CAMPAIGN_PERFORMANCE.name])

    def _record(self, inserted: dict[str, Inserted]) -> pa.Table | None:
        """Record the notices of this batch's alerts, flags, offers and reminders in the
        outbox (keyed on ids: a replayed batch records nothing twice); returns the outbox
        rows it inserted."""
        if self.outbox is None:
            return None
        recorded = [record_rows(self.outbox, kind, inserted[table].rows, inserted[table].fresh)
                    for kind, table in SOURCE_TABLE.items() if table in inserted]
        recorded = [r for r in recorded if r.num_rows]
        return pa.concat_tables(recorded) if recorded else None

    def _deliver(self, batch_id: int, recorded: pa.Table | None) -> None:
        """Send the notices this batch recorded as ``pending`` (before the state moves on: a
        crash replays the batch, which records nothing again; what the crash left
        ``pending`` goes at the next start)."""
        if recorded is not None and self.channels:
            pending = recorded.filter(pc.equal(recorded["status"], "pending")).to_pylist()
            done = self.outbox.deliver(pending, self.channels)
            for (channel, status), n in done.outcomes.items():
                metrics.NOTICES.labels(channel, status).inc(n)
            log.info("gold batch %d notices: %s", batch_id, done)

    def _sessions(self, commit: Commit, changes: pd.DataFrame) -> dict[str, Inserted]:
        """The session processor's typed changes: the signed rows' counts, summed on the driver
        (``*_deltas``, the pandas twins of the batch build's aggregates) ->
        ``gold/campaign_funnel``, ``gold/campaign_performance`` and
        ``gold/product_abandonment``; sessions that closed with a full cart and no purchase ->
        ``gold/cart_reminders``. (Their rows -> ``gold/session_funnel``: ``session_table``.)"""
        s, p = self.s, self.paths
        kind = changes["kind"]
        funnel = T.SESSION_FUNNEL
        signed = changes[kind == "session"]
        if len(signed):
            cells = funnel_cell_deltas(signed, s.funnel.window)
            cells = cells.assign(closed=False, window_date=cells["window_start"].dt.date)
            apply.cells(commit, from_pandas(cells, T.CAMPAIGN_FUNNEL), p[T.CAMPAIGN_FUNNEL.name])
            apply.campaign_performance(commit, pa.Table.from_pandas(campaign_total_deltas(signed),
                                                                    preserve_index=False),
                                       p[T.CAMPAIGN_PERFORMANCE.name])
            apply.products(commit, from_pandas(product_count_deltas(signed), T.PRODUCT_ABANDONMENT),
                           p[T.PRODUCT_ABANDONMENT.name])
        due = changes[kind == "reminder"]
        if not len(due):
            return {}
        sessions = pa.Table.from_pandas(due[funnel.columns], schema=arrow_schema(funnel),
                                        preserve_index=False)
        return {T.CART_REMINDERS.name: self._insert(commit, as_reminders(sessions), T.CART_REMINDERS)}

    def _profiles(self, commit: Commit, closed: pd.DataFrame | None, flags: pd.DataFrame | None) -> None:
        """The sessions this batch closed and the flags it raised -> ``gold/user_profile`` and
        ``gold/ip_profile`` (a row appended per user and address they name)."""
        closed = closed if closed is not None else pd.DataFrame(columns=T.SESSION_FUNNEL.columns)
        deltas = profile_deltas(closed, flags)
        if deltas.num_rows:
            apply.user_profiles(commit, deltas, self.paths[T.USER_PROFILE.name])
        by_ip = ip_deltas(closed)
        if by_ip.num_rows:
            apply.ip_profiles(commit, by_ip, self.paths[T.IP_PROFILE.name])

    def _score(self, commit: Commit, closed: pd.DataFrame) -> dict[str, Inserted]:
        """The sessions this batch closed, with their history (the stored profiles of their
        users and addresses, read before this batch's MERGE), scored by the champion anomaly
        model (none while no version holds the alias) -> ``gold/anomaly_scores``."""
        champion = self.champion.current() if self.champion is not None and len(closed) else None
        if champion is None:
            return {}
        version, model, cut = champion
        users = _stored(T.USER_PROFILE, self.paths[T.USER_PROFILE.name], closed["user_id"],
                        ["user_id", "first_session_end"])
        ips = _stored(T.IP_PROFILE, self.paths[T.IP_PROFILE.name], closed["ip_hashes"].explode().dropna(),
                      ["ip_hash", "users"])
        rows = score_rows(with_history(closed, users, ips), model, cut, version,
                          pd.Timestamp.now(tz="UTC").tz_localize(None))
        scored = from_pandas(rows, T.ANOMALY_SCORES)
        commit.append(scored, self.paths[T.ANOMALY_SCORES.name], T.ANOMALY_SCORES)
        metrics.ANOMALIES.labels(str(version)).inc(int(rows["is_anomaly"].sum()))
        return {T.ANOMALY_SCORES.name: Inserted(scored)}

    def _judge_windows(self, commit: Commit, watermark: datetime
                       ) -> tuple[pa.Table | None, dict[str, Inserted]]:
        """The campaign windows this watermark closes, checked by the funnel suite and judged
        for drop-off alerts (-> ``gold/alerts``); None when it closes none. On the driver: a
        few cells. ``apply`` marks them closed in ``gold/campaign_funnel`` once their
        notices are in the outbox, so a crash in between leaves them open and judged again."""
        closing = apply.closing_cells(self.paths[T.CAMPAIGN_FUNNEL.name], watermark, self.s.sessions.gap)
        if closing.num_rows == 0:
            return None, {}
        cells = closing.cast(arrow_schema(T.CAMPAIGN_FUNNEL))
        if self.quality is not None:  # the funnel suite, on each window as it closes
            now = datetime.now(UTC)
            self.quality.judge(self.quality.count_arrow(cells, now), commit, now)
        alerts = self._insert(commit, fire(cells, self.s.funnel.dropoff_rules), T.ALERTS)
        return closing, {T.ALERTS.name: alerts}

    def _insert(self, commit: Commit, rows: pa.Table, table: T.Table) -> Inserted:
        """Insert the rows ``table`` lacks; returns all of ``rows``, fresh when each was new."""
        rows = rows.cast(arrow_schema(table))
        return Inserted(rows, apply.insert_new(commit, rows, self.paths[table.name], table))


def session_table(changes: pd.DataFrame) -> pa.Table:
    """The session processor's typed changes -> what ``apply.sessions`` merges into
    ``gold/session_funnel``: the signed and closed rows, with ``kind`` and ``sign``."""
    rows = changes[changes["kind"].isin(["session", "closed"])]
    schema = pa.schema([*arrow_schema(T.SESSION_FUNNEL), pa.field("kind", pa.string()),
                        pa.field("sign", pa.int32())])
    return pa.Table.from_pandas(rows[schema.names], preserve_index=False, schema=schema)


def held_events(held: dict[str, Held]) -> int:
    """The open sessions' events the sessions processor holds."""
    values = held.get("sessions", Held()).values
    return sessions.held_rows(values[0]) if values and values[0] is not None else 0


def funnel_metrics(funnel_path: str, performance_path: str) -> None:
    """Sessions reaching each step and conversion in the newest funnel window, per campaign;
    clicks, purchases and revenue per campaign. Read back with delta-rs (the newest window's
    partition and the one-row-per-campaign table: a few ms)."""
    newest = max_stat(funnel_path, "window_start")
    if newest is not None:
        cells = delta_read(funnel_path, [("window_date", "=", newest.date())])
        start = pa.scalar(newest, cells.schema.field("window_start").type)
        cells = cells.filter(pc.equal(cells["window_start"], start))
        for row in cells.to_pylist():
            for step in STEPS:
                metrics.WINDOW_SESSIONS.labels(row["campaign_id"], step).set(row[f"reached_{step}"] or 0)
            for step in STEPS[1:]:
                conversion = row[f"conversion_{step}"]
                metrics.WINDOW_CONVERSION.labels(row["campaign_id"], step).set(conversion or 0.0)
    for row in delta_read(performance_path).to_pylist():
        campaign = row["campaign_id"]
        metrics.CAMPAIGN_CLICKS.labels(campaign).set(row["clicks"])
        metrics.CAMPAIGN_PURCHASES.labels(campaign).set(row["purchases"])
        metrics.CAMPAIGN_REVENUE.labels(campaign).set(row["revenue"])


def _stored(table: T.Table, path: str, keys: pd.Series, columns: list[str]) -> pd.DataFrame:
    """The stored profiles (``table``: its rows folded, one per key) of ``keys``."""
    (key,) = table.key
    rows = delta_read(path, columns=columns)
    wanted = pa.array(pd.unique(keys.to_numpy(object)), pa.string())
    return fold_arrow(rows.filter(pc.is_in(rows[key], value_set=wanted)), table).to_pandas()


def to_arrow_table(frame: pd.DataFrame, schema: StructType) -> pa.Table:
    """A processor's pandas output as Arrow typed by its Spark schema (naive times are UTC),
    so ``createDataFrame`` takes it without a row-by-row fallback."""
    return pa.Table.from_pandas(frame[schema.fieldNames()], schema=to_arrow_schema(schema, timezone="UTC"),
                                preserve_index=False)


def _ms(t: datetime | None) -> int:
    """Epoch ms of a naive UTC time; 0 (Spark's "no watermark") for None."""
    return epoch_ms(t) or 0
