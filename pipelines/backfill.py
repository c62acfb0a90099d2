"""Backfills: rebuild a date range of silver and gold with the functions the stream uses.

Each table's rows in the range are recomputed in batch and compared with what the table
holds; only a table whose rows differ is rewritten, with Delta ``replaceWhere`` on exactly
that range. So a second run of the same backfill changes 0 rows, and a backfill over what
the stream wrote changes only what the stream could not know (events behind its watermark).
Gold's tables are rebuilt in the order of their inputs, those whose inputs are done side by
side (``run_steps``).

Ranges and margins (``docs/backfill.md``):
- silver: events whose ``event_date`` is in [from, to], from bronze ingested from ``from - 1 day``;
- sessions: those that *start* in [from, to], built from on-time silver events in
  [from - 1 day, to + 1 day] so a session crossing either edge is whole;
- campaign funnel cells with ``window_start`` in [from, to + 1 day);
- fraud flags whose burst starts in [from, to], from events with the same 1-day margins;
- campaign performance, product abandonment and user profiles: rebuilt whole (one row per
  campaign, product or user);
- alerts, cart reminders, retarget offers: insert-only (what was sent stays sent);
- anomaly scores: the closed sessions that start in [from, to], scored with the champion (or
  ``--model-version N``): a (session, version) the table lacks is inserted, one whose score
  changed (its session did) is updated, and nothing else is touched.

The stream's quality suites (``pipelines/quality.py``) check the recomputed silver rows and
funnel cells with the same policies: ``drop`` keeps a row out of silver (and quarantines it,
if the quarantine lacks it), ``fail`` stops the backfill before that table is written.

Beside a running stream: silver is replaced only up to the source snapshot's newest
``ingest_time`` (rows the stream adds later are outside the predicate), and the gold step
holds the gold lease (``io/lease.py``) that the gold stream's micro-batches also hold.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.bronze import to_bronze
from pipelines.config import Settings
from pipelines.geo import ip_locations
from pipelines.gold import build
from pipelines.io import sinks, sources
from pipelines.io.delta_rs import Commit, arrow_schema, merge
from pipelines.io.delta_rs import read as delta_read
from pipelines.io.lease import lease
from pipelines.io.ledger import Ledger, last_committed
from pipelines.privacy import ip_salt
from pipelines.quality import Quality, dropped_to_quarantine
from pipelines.silver import dedupe, event_watermark, parse, to_silver, valid_events
from pipelines.stateful.gold import Held
from pipelines.stateful.sessions import HELD, decode, open_journeys
from pipelines.stateful.state_files import StateFiles, last_applied
from pipelines.streams.base import CHECKPOINTS, QUERY, app_id
from pipelines.streams.gold import gold_processors

log = logging.getLogger(__name__)
MARGIN = timedelta(days=1)
Rows = Callable[[], DataFrame]  # a table's recomputed rows, built when its step runs


@dataclass
class Changes:
    table: str
    read: int
    written: int
    added: int
    removed: int

    @property
    def changed(self) -> int:
        return self.added + self.removed


def _lit_date(d: date) -> str:
    return f"'{d.isoformat()}'"


def replace_range(spark: SparkSession, rows: Callable[[], DataFrame], path: str, where: str,
                  name: str, read: int = 0, ignore: tuple[str, ...] = ("created_at",),
                  check: Callable[[DataFrame], DataFrame] | None = None) -> Changes:
    """Make the rows of ``path`` matching ``where`` equal ``rows()`` (which must match it too).

    ``check`` (a quality suite) sees the new rows first and returns those that go on; it may
    raise, and then nothing is written. Rewrites only when the rows differ (``ignore`` columns
    aside). On a Delta conflict the whole step (read, check, compare, write) runs again on
    fresh snapshots.
    """
    result: list[Changes] = []

    def attempt() -> None:
        cached = rows().persist()
        new = check(cached) if check else cached
        old = spark.read.format("delta").load(path).where(where)
        added, removed, rows_new = difference(new, old, [c for c in new.columns if c not in ignore])
        changed = bool(added or removed)
        if changed:
            sinks.replace_where(new, path, where)
        result[:] = [Changes(name, read, rows_new if changed else 0, added, removed)]
        cached.unpersist()

    sinks.with_retry(attempt, what=f"backfill {name}")
    return result[0]


def difference(new: DataFrame, old: DataFrame, cols: list[str]) -> tuple[int, int, int]:
    """(rows of ``new`` that ``old`` lacks, rows of ``old`` that ``new`` lacks, rows of ``new``),
    as multisets over ``cols`` (``exceptAll`` both ways), in one Spark job: each row counts +1
    from ``new`` and -1 from ``old``, and a distinct row's sum is its surplus on one side."""
    side, surplus, ours = "__side", "__surplus", "__new"  # names no table uses
    tagged = (_comparable(new, cols).withColumn(side, F.lit(1))
              .unionByName(_comparable(old, cols).withColumn(side, F.lit(-1))))
    per_row = tagged.groupBy(*cols).agg(F.sum(side).alias(surplus),
                                        F.count_if(F.col(side) > 0).alias(ours))
    added, removed, rows = per_row.agg(F.sum(F.greatest(surplus, F.lit(0))),
                                       F.sum(F.greatest(-F.col(surplus), F.lit(0))), F.sum(ours)).first()
    return int(added or 0), int(removed or 0), int(rows or 0)


def _comparable(df: DataFrame, cols: list[str]) -> DataFrame:
    """``cols`` of ``df`` with doubles rounded to 9 decimals: the stream adds sums up batch by
    batch, a backfill all at once, and the two may differ in the last bits of a double."""
    kinds = dict(df.dtypes)
    return df.select(*[F.round(c, 9).alias(c) if kinds[c] == "double" else F.col(c) for c in cols])


def insert_missing(new: DataFrame, path: str, key: str, name: str) -> Changes:
    """Insert the rows of ``new`` whose ``key`` the table lacks (alerts, offers, reminders)."""
    new = new.persist()
    existing = new.sparkSession.read.format("delta").load(path).select(key)
    added = new.join(existing, key, "left_anti").count()
    if added:
        sinks.insert_new(new, path, key)
    new.unpersist()
    return Changes(name, 0, added, added, 0)


@dataclass(frozen=True)
class Step:
    """One gold table's part of a backfill: ``run`` rebuilds ``table`` from what the steps
    for the tables in ``after`` wrote."""
    table: T.Table
    after: tuple[T.Table, ...]
    run: Callable[[], Changes]


def run_steps(steps: list[Step], workers: int = 3) -> list[Changes]:
    """Run every step once the steps it reads from have finished, independent ones side by
    side; their changes in the order of ``steps``.

    A step is a few small Spark jobs (a compare, a commit), and on a day's rows most of their
    time is the driver's: planning, Delta log reads, code generation. Steps submitted from
    separate threads run as concurrent Spark jobs, so those overlap on the cores. The first
    failure is raised once the steps already running have stopped; no step starts after it.
    """
    done: dict[str, Changes] = {}
    waiting, running = list(steps), {}
    with ThreadPoolExecutor(workers, thread_name_prefix="backfill") as pool:
        while waiting or running:
            ready = [step for step in waiting if all(t.name in done for t in step.after)]
            if not ready and not running:
                raise ValueError(f"steps wait for tables no step writes: {[s.table.name for s in waiting]}")
            for step in ready:
                waiting.remove(step)
                running[pool.submit(step.run)] = step
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done[running.pop(future).table.name] = future.result()
    return [done[step.table.name] for step in steps]


@dataclass
class Checks:
    """The stream's quality suites, applied by a backfill to the rows it recomputes. Results
    go to ``quality/results`` with query ``backfill`` and batch id ``yyyymmdd`` of the day
    (once per run and day)."""
    silver: Quality
    funnel: Quality
    run_id: str = field(default_factory=lambda: f"backfill-{uuid.uuid4()}")
    quarantined: int = 0
    ledger: Ledger = field(default_factory=Ledger)

    @classmethod
    def of(cls, spark: SparkSession, s: Settings) -> Checks | None:
        if not s.quality.enabled:
            return None
        T.ensure(spark, s.lake, T.QUALITY_RESULTS)
        return cls(Quality(s.lake, "silver_events", s.quality, "backfill"),
                   Quality(s.lake, "campaign_funnel", s.quality, "backfill"))

    def _commit(self, suite: str, day: date) -> Commit:
        return Commit(f"{self.run_id}-{suite}", _batch_id(day), self.ledger)

    def silver_rows(self, s: Settings, day: date) -> Callable[[DataFrame], DataFrame]:
        """Check recomputed silver rows; ``drop`` rows go to the quarantine (unless it has
        them already, e.g. from the stream) instead of silver; ``fail`` raises."""
        def check(rows: DataFrame) -> DataFrame:
            kept, dropped = self.silver.apply(rows, self._commit("silver", day))
            if dropped is not None:
                self.quarantined += quarantine_missing(dropped, s.table(T.SILVER_QUARANTINE.name))
            return kept
        return check

    def funnel_rows(self, day: date) -> Callable[[DataFrame], DataFrame]:
        def check(rows: DataFrame) -> DataFrame:
            kept, _ = self.funnel.apply(rows, self._commit("funnel", day))
            return kept
        return check


def _batch_id(day: date) -> int:
    return int(day.strftime("%Y%m%d"))


def quarantine_missing(dropped: DataFrame, path: str) -> int:
    """Append the quarantine rows of ``dropped`` whose (event id, reason) the quarantine lacks."""
    event_id = F.get_json_object("raw", "$.event_id")
    new = dropped_to_quarantine(dropped).withColumn("_event_id", event_id)
    have = dropped.sparkSession.read.format("delta").load(path).select(
        event_id.alias("_event_id"), "reason")
    missing = new.join(have, ["_event_id", "reason"], "left_anti").drop("_event_id").persist()
    n = missing.count()
    if n:
        sinks.append(missing, path)
    missing.unpersist()
    return n


def bronze_rows(spark: SparkSession, s: Settings, source: str, since: date) -> DataFrame:
    """What silver is rebuilt from: ``bronze/events`` ingested on or after ``since``, or
    (``landing-archive``) every file under the landing folder, as bronze rows whose
    ``ingest_time`` is the file's modification time (when it landed)."""
    if source == "bronze":
        return spark.read.format("delta").load(s.table(T.BRONZE_EVENTS.name)).where(
            F.col("ingest_date") >= F.lit(since))
    if source == "landing-archive":
        return sources.read_archive(spark, s.input).transform(to_bronze)
    raise ValueError(f"unknown source {source!r}; choose from {list(SOURCES)}")


SOURCES = ("bronze", "landing-archive")


def backfill_silver(spark: SparkSession, s: Settings, start: date, end: date,
                    source: str = "bronze", checks: Checks | None = None) -> Changes:
    """Bronze (or the landing archive) -> silver for events dated [start, end], late ones
    included (``late`` false).

    Only silver rows ingested up to the newest row of the source snapshot are replaced
    (``ingest_time <= cutoff``), so rows a running stream adds meanwhile are left alone. From
    the archive the cutoff is the time of the read: archive rows carry their files' landing
    times, while the stream's rows carry its own (later) processing times.
    """
    started = datetime.now(UTC).replace(tzinfo=None)  # session times are naive UTC
    bronze = bronze_rows(spark, s, source, start - MARGIN)
    if source == "landing-archive":  # files landed up to now; later ones are the stream's
        bronze = bronze.where(F.col("ingest_time") <= F.lit(started))
    bronze = bronze.persist()
    read, cutoff = bronze.agg(F.count("*"), F.max("ingest_time")).first()
    if source == "landing-archive" and cutoff is not None:
        cutoff = started
    if cutoff is None:
        bronze.unpersist()
        return Changes(T.SILVER_EVENTS.name, 0, 0, 0, 0)

    locations, ip_key = ip_locations(spark, s.geo.ip_locations), ip_salt(s.lake)

    def rows() -> DataFrame:  # the stream's chain: parse -> valid -> dedupe -> to_silver
        # The cutoff again: a stream appending to bronze re-caches ``bronze`` at its new version.
        return (bronze.where(F.col("ingest_time") <= F.lit(cutoff)).transform(parse).transform(valid_events)
                .where(F.col("event_date").between(F.lit(start), F.lit(end))).transform(dedupe)
                .transform(to_silver(None, locations, ip_key)))

    where = (f"event_date >= {_lit_date(start)} AND event_date <= {_lit_date(end)}"
             f" AND ingest_time <= '{cutoff.isoformat()}'")
    # Compare content: which of two identical deliveries a row came from (its ingest_time) is
    # not a change. The stream keeps the first it meets within a micro-batch; this, the earliest.
    changes = replace_range(spark, rows, s.table(T.SILVER_EVENTS.name), where, T.SILVER_EVENTS.name,
                            read, ("ingest_time",), checks.silver_rows(s, start) if checks else None)
    bronze.unpersist()
    return changes


def backfill_gold(spark: SparkSession, s: Settings, start: date, end: date,
                  checks: Checks | None = None) -> list[Changes]:
    """On-time silver -> every gold table for [start, end] (see the module docstring for ranges).
    Holds the gold lease throughout, so a gold micro-batch never interleaves with it."""
    for table in T.GOLD:  # a backfill may run before the gold stream ever did
        T.ensure(spark, s.lake, table)
    with lease(s.lake, who=f"backfill {start}..{end}"):
        return _backfill_gold(spark, s, start, end, checks)


def interrupted(s: Settings, applied: int | None) -> list[str]:
    """The silver and gold tables holding a commit of a micro-batch after ``applied`` (None:
    any) of the stream's query: one it began and did not finish (it died between its
    writes and its state file). Its restart replays that batch, and the ledger skips the
    tables that hold it, so a backfill in between would leave that batch's rows out of the
    gold aggregates for good, or count them twice."""
    checkpoint = Path(s.checkpoint(CHECKPOINTS[QUERY]))
    if not (checkpoint / "metadata").exists():  # the query never started
        return []
    applied = -1 if applied is None else applied
    gold, silver = app_id("gold", checkpoint), app_id("silver", checkpoint)
    apps = ({t.name: [gold] for t in T.GOLD} | {T.CAMPAIGN_FUNNEL.name: [gold, f"{gold}/close"]}
            | {t.name: [silver] for t in (T.SILVER_EVENTS, T.SILVER_QUARANTINE)})
    return [name for name, ids in apps.items()
            if any(last_committed(s.table(name), a) > applied for a in ids)]


def held_sessions(spark: SparkSession, s: Settings, applied: int | None) -> DataFrame | None:
    """The ``tracking_id`` of every journey the stream holds an open session of after
    micro-batch ``applied`` (its state file; None: the stream never ran a batch)."""
    if applied is None:
        return None
    checkpoint = Path(s.checkpoint(CHECKPOINTS[QUERY]))
    state, _ = StateFiles(checkpoint, gold_processors(s)).load(applied + 1)
    values = state.get("sessions", Held()).values
    events = decode(values[0]) if values and values[0] is not None else HELD.empty_table()
    ids = pa.table({"tracking_id": open_journeys(events)})
    return spark.createDataFrame(ids.to_pandas(), "tracking_id string")


def _backfill_gold(spark: SparkSession, s: Settings, start: date, end: date,
                   checks: Checks | None) -> list[Changes]:
    # Under the lease no other writer touches these gold tables, and the stream appends to
    # silver only under it too, so one snapshot of silver is exactly what gold has applied
    # and serves every table (and any retry). The watermark is the stream's: event_watermark
    # of the newest on-time event it has seen (its state), or of silver's when it never ran.
    # What the stream has applied: the last micro-batch whose body finished, read from its
    # state file (written under the lease), not from Spark's commit log, which marks a batch
    # committed only after its body returned and the lease was released.
    applied = last_applied(Path(s.checkpoint(CHECKPOINTS[QUERY])))
    batch, streamed = applied if applied is not None else (None, None)
    if begun := interrupted(s, batch):
        raise RuntimeError(
            f"micro-batch {0 if batch is None else batch + 1} of the stream stopped part way "
            f"({', '.join(begun)} hold its writes, gold's state does not): start `funnelhouse run` "
            "so it finishes that batch, then backfill")
    held = held_sessions(spark, s, batch)
    silver = spark.read.format("delta").load(s.table(T.SILVER_EVENTS.name)).where(~F.col("late"))
    latest = build.latest_event_time(silver)
    if streamed is not None and latest is not None:
        latest = min(latest, datetime.fromtimestamp(streamed / 1000, UTC).replace(tzinfo=None))
    watermark = event_watermark(latest, s.stream.watermark_delay)
    events = silver.where(F.col("event_date").between(
        F.lit(start - MARGIN), F.lit(end + MARGIN))).persist()

    def table(t: T.Table) -> DataFrame:
        return spark.read.format("delta").load(s.table(t.name))

    read = events.count()
    sessions, funnel, flags, offers = T.SESSION_FUNNEL, T.CAMPAIGN_FUNNEL, T.FRAUD_FLAGS, T.RETARGET_OFFERS

    def dated(column: Column) -> Column:
        return column.between(F.lit(start), F.lit(end))

    in_windows = (F.col("window_start") >= F.lit(start)) & (F.col("window_start") < F.lit(end + MARGIN))
    days = f"session_date >= {_lit_date(start)} AND session_date <= {_lit_date(end)}"
    windows = f"window_start >= {_lit_date(start)} AND window_start < {_lit_date(end + MARGIN)}"
    bursts = f"first_event_time >= {_lit_date(start)} AND first_event_time < {_lit_date(end + MARGIN)}"

    def replace(t: T.Table, rows: Rows, where: str = "true", **kw) -> Callable[[], Changes]:
        return lambda: replace_range(spark, rows, s.table(t.name), where, t.name, **kw)

    def insert(t: T.Table, rows: Rows, key: str) -> Callable[[], Changes]:
        return lambda: insert_missing(rows(), s.table(t.name), key, t.name)

    steps = [
        Step(sessions, (), replace(sessions, lambda: events.transform(build.session_rows(s, watermark))
                                   .where(dated(F.col("session_date"))).transform(build.held_open(held)),
                                   days, read=read)),
        Step(funnel, (sessions,), replace(
            funnel, lambda: table(sessions).transform(build.funnel_rows(s, watermark)).where(in_windows),
            windows, check=checks.funnel_rows(start) if checks else None)),
        Step(T.CAMPAIGN_PERFORMANCE, (sessions,), replace(
            T.CAMPAIGN_PERFORMANCE, lambda: table(sessions).transform(build.performance_rows(s)))),
        Step(T.PRODUCT_ABANDONMENT, (sessions,), replace(
            T.PRODUCT_ABANDONMENT, lambda: table(sessions).transform(build.product_rows(s)))),
        Step(T.ALERTS, (funnel,), insert(
            T.ALERTS, lambda: table(funnel).where(in_windows).transform(build.alert_rows(s, watermark)),
            "alert_id")),
        Step(T.CART_REMINDERS, (sessions,), insert(
            T.CART_REMINDERS, lambda: table(sessions).where(dated(F.col("session_date")))
            .transform(build.reminder_rows(s)), "reminder_id")),
        Step(offers, (), insert(
            offers, lambda: events.transform(build.offer_rows(s, watermark, table(offers)))
            .where(dated(F.to_date("click_time"))), "offer_id")),
        Step(flags, (), replace(flags, lambda: events.transform(build.flag_rows(s, watermark))
                                .where(dated(F.to_date("first_event_time"))), bursts)),
        Step(T.USER_PROFILE, (sessions, flags), replace(
            T.USER_PROFILE, lambda: table(sessions).transform(build.profile_rows(table(flags))))),
        Step(T.IP_PROFILE, (sessions,), replace(
            T.IP_PROFILE, lambda: table(sessions).transform(build.ip_profile_rows))),
    ]
    try:
        return run_steps(steps)
    finally:
        events.unpersist()


def backfill_scores(spark: SparkSession, s: Settings, start: date, end: date,
                    version: int | None = None) -> Changes:
    """Score the closed sessions of ``gold/session_funnel`` that start in [start, end] with
    ``version`` of the anomaly model (default: the champion; none yet: nothing is scored)
    -> ``gold/anomaly_scores``, through the stream's ``score_rows``. Runs on the driver
    (delta-rs + pandas), like the stream's scoring."""
    from pipelines.anomaly.model import has_store, holder, load, missing_features, score_rows, tracking_uri
    from pipelines.anomaly.sessions import closed_sessions

    name, table = s.anomaly.model_name, T.ANOMALY_SCORES
    none = Changes(table.name, 0, 0, 0, 0)
    uri = tracking_uri(s.lake, s.mlflow.tracking_uri)
    version = version or (holder(name, uri) if has_store(uri) else None)
    if version is None:
        log.warning("no %s model holds the alias champion: the backfill scores no session", name)
        return none
    version, model, cut = load(name, uri, version)
    if missing_features(model):
        raise ValueError(f"{name} version {version} needs features this release does not compute "
                         f"({', '.join(missing_features(model))}): train a new version, or pass another "
                         "--model-version")
    sessions = closed_sessions(s.table(T.SESSION_FUNNEL.name), start, end)
    if sessions.empty:
        return none
    new = score_rows(sessions, model, cut, version, pd.Timestamp.now(tz="UTC").tz_localize(None))
    path = T.ensure(spark, s.lake, table)
    old = delta_read(path)
    old = old.filter(pc.equal(old["model_version"], version)).select(
        ["session_id", "anomaly_score", "is_anomaly"]).to_pandas()
    both = new.merge(old, on="session_id", how="left", suffixes=("", "_old"), indicator=True)
    added = both["_merge"] == "left_only"
    changed = ~added & ((both["anomaly_score"] - both["anomaly_score_old"]).abs().gt(1e-9)
                        | (both["is_anomaly"] != both["is_anomaly_old"]))
    rows = new[(added | changed).to_numpy()]
    if len(rows):
        source = pa.Table.from_pandas(rows, schema=arrow_schema(table), preserve_index=False)
        merge(source, path, "t.session_id = s.session_id AND t.model_version = s.model_version",
              lambda m: m.when_matched_update_all().when_not_matched_insert_all())
    return Changes(table.name, len(sessions), len(rows), len(rows), int(changed.sum()))


LAYERS: dict[str, Callable[..., list[Changes]]] = {
    "silver": lambda spark, s, a, b, source="bronze", checks=None, model_version=None: [
        backfill_silver(spark, s, a, b, source, checks)],
    "gold": lambda spark, s, a, b, source="bronze", checks=None, model_version=None: [
        *backfill_gold(spark, s, a, b, checks),
        *([backfill_scores(spark, s, a, b, model_version)] if s.anomaly.enabled else [])],
}


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]
