"""Data quality with Great Expectations at the silver and gold boundaries.

The suites are Great Expectations expectations (``silver_checks``, ``funnel_checks``), each
declared as its GX class name and arguments (``Expect``), and GX builds the Data Docs from
them (``build_docs``). GX itself is imported only to validate with it or to build the docs:
the import costs 2.6-3.8 s, a fifth of the demo's run. Running GX on every micro-batch, though,
cost about 1.6 s a batch (7 Spark jobs and a Spark commit), more than a real-time batch
itself. So each expectation is turned into a Spark predicate *from its own configuration*
(``row_rule``; never written twice by hand), every check of a suite is counted in one
aggregation over the batch, and the results are appended with delta-rs. A test runs GX on
the same rows and checks that both count the same.

Every check has a policy, as in Databricks pipelines:
- ``warn``: the result is recorded in ``quality/results``, and the rows go on;
- ``drop``: rows that fail go to ``silver/quarantine`` with reason ``expectation:<name>``;
- ``fail``: the query stops with ``QualityFailure``, naming the expectation and the batch,
  before any table but ``quality/results`` is written.
Checks over a whole batch (uniqueness) can only warn or fail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines import metrics
from pipelines import tables as T
from pipelines.config import Policy, QualitySettings
from pipelines.contract import STEPS
from pipelines.io.delta_rs import Commit, arrow_schema

log = logging.getLogger(__name__)


class QualityFailure(RuntimeError):
    """An expectation with the ``fail`` policy did not hold."""


class Expect:
    """One GX expectation: its class name in ``great_expectations.expectations`` and its
    arguments, with GX's defaults for the ones left out. ``to_gx`` makes the GX object."""

    DEFAULTS: dict[str, Any] = {"min_value": None, "max_value": None, "strict_min": False,
                                "strict_max": False, "or_equal": False}

    def __init__(self, kind: str, **args: Any):
        self.kind, self.args = kind, args

    def __getattr__(self, name: str) -> Any:  # e.column, e.min_value, ...: what GX's object has
        args = self.__dict__.get("args", {})
        if name in args or name in self.DEFAULTS:
            return args.get(name, self.DEFAULTS.get(name))
        raise AttributeError(f"{self.__dict__.get('kind', 'Expect')} has no argument {name!r}")

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(f'{k}={v!r}' for k, v in sorted(self.args.items()))})"

    def to_gx(self):
        import great_expectations as gx

        return getattr(gx.expectations, self.kind)(**self.args)


class _Expectations:
    """``E.ExpectColumnValuesToBeBetween(column=..., ...)``: GX's own spelling, made into an
    ``Expect`` without importing GX."""

    def __getattr__(self, kind: str):
        return lambda **args: Expect(kind, **args)


E = _Expectations()


@dataclass(frozen=True)
class Check:
    name: str
    expectation: Expect
    policy: Policy


def silver_checks(q: QualitySettings, now: datetime) -> list[Check]:
    """``silver/events``: keys, allowed types, ranges, clock skew, uniqueness per batch."""
    future = (now + q.future_tolerance).replace(tzinfo=None)
    return [
        Check("event_id_not_null", E.ExpectColumnValuesToNotBeNull(column="event_id"), "drop"),
        Check("user_id_not_null", E.ExpectColumnValuesToNotBeNull(column="user_id"), "drop"),
        Check("event_type_allowed", E.ExpectColumnValuesToBeInSet(column="event_type",
                                                                  value_set=list(STEPS)), "drop"),
        Check("price_in_range", E.ExpectColumnValuesToBeBetween(column="price", min_value=0,
                                                                max_value=q.max_price), "drop"),
        Check("quantity_in_range", E.ExpectColumnValuesToBeBetween(column="quantity", min_value=1,
                                                                   max_value=q.max_quantity), "drop"),
        Check("event_time_not_future", E.ExpectColumnValuesToBeBetween(column="event_time",
                                                                       max_value=future), "drop"),
        Check("event_id_unique", E.ExpectColumnValuesToBeUnique(column="event_id"), "fail"),
    ]


def funnel_checks(q: QualitySettings, now: datetime) -> list[Check]:
    """``gold/campaign_funnel``: keys present, and no step reached by more sessions than the one
    before it."""
    checks = [Check("funnel_keys_not_null", E.ExpectColumnValuesToNotBeNull(column="campaign_id"), "fail")]
    for a, b in zip(STEPS, STEPS[1:], strict=False):
        checks.append(Check(f"funnel_{b}_le_{a}", E.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=f"reached_{a}", column_B=f"reached_{b}", or_equal=True), "fail"))
    return checks


SUITES: dict[str, Callable[[QualitySettings, datetime], list[Check]]] = {
    "silver_events": silver_checks,
    "campaign_funnel": funnel_checks,
}
TABLE_OF_SUITE = {"silver_events": T.SILVER_EVENTS, "campaign_funnel": T.CAMPAIGN_FUNNEL}


def check_names() -> list[str]:
    now = datetime.now(UTC)
    return [c.name for suite in SUITES.values() for c in suite(QualitySettings(), now)]


def row_rule(e: Expect) -> Column | None:
    """The Spark predicate a row must meet for ``e``, read from its configuration; None for
    an expectation over the whole batch. As in GX, a null value passes a set or range rule
    (and a pair rule when either side is null)."""
    kind = e.kind
    if kind == "ExpectColumnValuesToNotBeNull":
        return F.col(e.column).isNotNull()
    if kind == "ExpectColumnValuesToBeInSet":
        return F.col(e.column).isNull() | F.col(e.column).isin(*e.value_set)
    if kind == "ExpectColumnValuesToBeBetween":
        c, bounds = F.col(e.column), []
        if e.min_value is not None:
            bounds.append(c > F.lit(e.min_value) if e.strict_min else c >= F.lit(e.min_value))
        if e.max_value is not None:
            bounds.append(c < F.lit(e.max_value) if e.strict_max else c <= F.lit(e.max_value))
        return c.isNull() | reduce(Column.__and__, bounds)
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        a, b = F.col(e.column_A), F.col(e.column_B)
        return a.isNull() | b.isNull() | (a >= b if e.or_equal else a > b)
    if kind == "ExpectColumnValuesToBeUnique":
        return None
    raise NotImplementedError(f"no Spark rule for {kind}; add one to quality.row_rule")


def arrow_rule(e: Expect, rows: pa.Table) -> pa.ChunkedArray | None:
    """``row_rule`` over rows already on the driver (Arrow): true where a row meets ``e``;
    None for an expectation over the whole batch. The test suite holds both forms to what GX
    counts on the same rows."""
    kind = e.kind
    if kind == "ExpectColumnValuesToNotBeNull":
        return pc.is_valid(rows[e.column])
    if kind == "ExpectColumnValuesToBeInSet":
        c = rows[e.column]
        return pc.or_kleene(pc.is_null(c), pc.is_in(c, value_set=pa.array(e.value_set, c.type)))
    if kind == "ExpectColumnValuesToBeBetween":
        c, bounds = rows[e.column], []
        if e.min_value is not None:
            low = pa.scalar(e.min_value, c.type)
            bounds.append(pc.greater(c, low) if e.strict_min else pc.greater_equal(c, low))
        if e.max_value is not None:
            high = pa.scalar(e.max_value, c.type)
            bounds.append(pc.less(c, high) if e.strict_max else pc.less_equal(c, high))
        return pc.or_kleene(pc.is_null(c), reduce(pc.and_kleene, bounds, pc.is_valid(c)))
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        a, b = rows[e.column_A], rows[e.column_B]
        either = pc.or_kleene(pc.is_null(a), pc.is_null(b))
        return pc.or_kleene(either, pc.greater_equal(a, b) if e.or_equal else pc.greater(a, b))
    if kind == "ExpectColumnValuesToBeUnique":
        return None
    raise NotImplementedError(f"no Arrow rule for {kind}; add one to quality.arrow_rule")


def _unexpected(check: Check) -> Column:
    """How many rows of the batch break ``check``, as one aggregate."""
    rule = row_rule(check.expectation)
    if rule is not None:
        return F.count_if(~rule)
    column = check.expectation.column  # ExpectColumnValuesToBeUnique: rows beyond the first
    return F.count(column) - F.count_distinct(column)


class Quality:
    """The checks of one suite for one query, run on each batch in one aggregation."""

    def __init__(self, lake: str, suite: str, settings: QualitySettings, query: str):
        unknown = set(settings.policies) - set(check_names())
        if unknown:
            raise ValueError(f"quality.policies: unknown expectation(s) {sorted(unknown)}; "
                             f"known: {check_names()}")
        self.suite, self.q, self.query = suite, settings, query
        self.results = f"{lake}/{T.QUALITY_RESULTS.name}"
        self._breaks: dict[str, tuple[str, Column | None]] = {}  # name -> (its configuration, predicate)

    def checks(self, now: datetime) -> list[Check]:
        return [Check(c.name, c.expectation, self.q.policies.get(c.name, c.policy))
                for c in SUITES[self.suite](self.q, now)]

    def counts(self, now: datetime) -> list[Column]:
        """One aggregate per check (named after it): the rows of the batch that break it. A
        caller folds them into its own aggregation over the batch, so checking costs no pass
        of its own."""
        return [_unexpected(c).alias(c.name) for c in self.checks(now)]

    def breaks(self, now: datetime) -> dict[str, Column]:
        """Per check with a row rule: a predicate named after it, true where a row breaks it.
        A caller that collects its batch adds them as columns, and ``count_arrow`` and
        ``drop_reason`` read them there: checking costs no Spark pass of its own."""
        out = {}
        for c in self.checks(now):  # each built once per configuration (only the future bound moves)
            config = repr(c.expectation)
            if self._breaks.get(c.name, ("",))[0] != config:
                rule = row_rule(c.expectation)
                self._breaks[c.name] = (config, None if rule is None else ~rule)
            if (predicate := self._breaks[c.name][1]) is not None:
                out[c.name] = predicate
        return out

    def fixed_breaks(self) -> dict[str, Column]:
        """``breaks`` of the checks whose rule does not move with the clock (all but those
        with a bound set from ``now``, as ``event_time_not_future``'s): a streaming query's
        definition, built once, can hold them. A predicate that changed every micro-batch
        would make Spark generate, and the JVM compile, the query's code anew each time; the
        driver adds the others (``with_breaks``)."""
        early, late = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        fixed = {a.name for a, b in zip(self.checks(early), self.checks(late), strict=True)
                 if repr(a.expectation) == repr(b.expectation)}
        return {name: rule for name, rule in self.breaks(early).items() if name in fixed}

    def with_breaks(self, rows: pa.Table, now: datetime) -> pa.Table:
        """Rows on the driver, with the ``breaks(now)`` column of each check with a row rule
        that they do not carry yet, computed by its ``arrow_rule``."""
        for c in self.checks(now):
            if c.name not in rows.column_names and (meets := arrow_rule(c.expectation, rows)) is not None:
                rows = rows.append_column(c.name, pc.invert(meets))
        return rows

    def count_arrow(self, rows: pa.Table, now: datetime) -> dict[str, int]:
        """``counts(now)`` over rows on the driver: a check's ``breaks(now)`` column when the
        rows carry it (Spark computed it as it collected them), else its ``arrow_rule``."""
        out = {"_rows": rows.num_rows}
        for c in self.checks(now):
            if c.name in rows.column_names:
                out[c.name] = pc.sum(rows[c.name]).as_py() or 0
            elif (meets := arrow_rule(c.expectation, rows)) is not None:
                out[c.name] = rows.num_rows - (pc.sum(meets).as_py() or 0)
            else:  # ExpectColumnValuesToBeUnique: non-null values beyond the first of each
                values = rows[c.expectation.column]
                out[c.name] = pc.count(values).as_py() - pc.count_distinct(values).as_py()
        return out

    def judge(self, counts: Mapping[str, int], commit: Commit, now: datetime) -> list[str]:
        """Record a batch's ``counts`` (once per batch), raise ``QualityFailure`` on a failed
        ``fail`` check before anything else is written, warn on the others; the names of the
        failed ``drop`` checks with a row rule, in the suite's order."""
        checks = self.checks(now)
        if counts["_rows"]:
            self._record(checks, counts, commit, now)
        failed = [c for c in checks if counts[c.name]]
        for c in failed:
            message = (f"expectation {c.name} failed on {self.suite} batch {commit.batch_id}"
                       f" ({counts[c.name]} unexpected of {counts['_rows']} rows)")
            if c.policy == "fail":
                raise QualityFailure(message)
            log.warning("%s (%s)", message, c.policy)
        return [c.name for c in failed if c.policy == "drop" and row_rule(c.expectation) is not None]

    def apply(self, df: DataFrame, commit: Commit, counts=None, now: datetime | None = None
              ) -> tuple[DataFrame, DataFrame | None]:
        """Judge ``df`` (cached by the caller) with the suite (``judge``), and return the rows
        that go on and those a ``drop`` check rejects (with ``_reason``), or None when none
        is rejected. ``counts``: a row holding ``_rows`` and the ``counts(now)`` aggregates,
        when the caller computed them already."""
        now = now or datetime.now(UTC)
        checks = self.checks(now)
        if counts is None:
            counts = df.agg(F.count(F.lit(1)).alias("_rows"), *self.counts(now)).first()
        names = self.judge(counts, commit, now)
        drops = [c for c in checks if c.name in names]
        if not drops:
            return df, None
        reason = F.lit(None).cast("string")
        for c in reversed(drops):
            reason = F.when(~row_rule(c.expectation), F.lit(f"expectation:{c.name}")).otherwise(reason)
        marked = df.withColumn("_reason", reason)
        return marked.where(F.col("_reason").isNull()).drop("_reason"), marked.where(
            F.col("_reason").isNotNull())

    def _record(self, checks: list[Check], counts, commit: Commit, now: datetime) -> None:
        at = now.replace(tzinfo=None)
        rows = [{"batch_id": commit.batch_id, "query": self.query, "suite": self.suite,
                 "expectation": c.name, "policy": c.policy, "success": counts[c.name] == 0,
                 "unexpected_count": counts[c.name], "element_count": counts["_rows"],
                 "validated_at": at} for c in checks]
        table = pa.Table.from_pylist(rows, schema=arrow_schema(T.QUALITY_RESULTS))
        if commit.append(table, self.results, T.QUALITY_RESULTS):
            for c in checks:
                if counts[c.name]:
                    metrics.QUALITY_FAILED.labels(self.suite, c.name).inc()


def drop_reason(rows: pa.Table, drops: list[str]) -> pa.Array:
    """Per collected row (with the ``breaks`` columns): ``expectation:<name>`` of the first
    of the ``drops`` checks it breaks, null when it breaks none."""
    reason = pa.nulls(rows.num_rows, pa.string())
    for name in reversed(drops):
        reason = pc.if_else(pc.fill_null(rows[name], False), f"expectation:{name}", reason)
    return reason


def dropped_to_quarantine(dropped: DataFrame) -> DataFrame:
    """Dropped silver rows as ``silver/quarantine`` rows: the event as JSON, and its reason."""
    cols = [c for c in dropped.columns if c != "_reason"]
    given = {"raw": F.to_json(F.struct(*cols)), "reason": F.col("_reason"),
             "ingest_time": F.col("ingest_time"), "quarantine_time": F.current_timestamp(),
             "ingest_date": F.to_date("ingest_time")}
    return dropped.select(*[given.get(c, F.lit(None)).alias(c) for c in T.SILVER_QUARANTINE.columns]
                          ).transform(T.conform(T.SILVER_QUARANTINE))


def build_docs(spark, s, out=None) -> str:
    """GX Data Docs for every suite, validated by GX itself against its whole table as it is
    now, in a file-backed GX project under ``<lake>/_quality/gx``. Returns the site's index.html."""
    from pathlib import Path

    import great_expectations as gx
    from delta.tables import DeltaTable
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root = Path(s.lake) / "_quality"
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = Path(out) if out else root / "docs"
    if "funnelhouse" not in context.get_site_names():
        context.add_data_docs_site("funnelhouse", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    source = context.data_sources.add_or_update_spark("lake")
    now = datetime.now(UTC)
    for name, make in SUITES.items():
        path = s.table(TABLE_OF_SUITE[name].name)
        if not DeltaTable.isDeltaTable(spark, path):
            continue
        df = spark.read.format("delta").load(path)
        batches = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("table")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=name))
        for c in make(s.quality, now):
            suite.add_expectation(c.expectation.to_gx())
        suite.save()
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}-table", data=batches, suite=suite))
        checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
            name=f"{name}-docs", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["funnelhouse"])]))
        checkpoint.run(batch_parameters={"dataframe": df})
    context.build_data_docs(site_names=["funnelhouse"])
    return str(site / "index.html")
