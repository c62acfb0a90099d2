"""Data quality with Great Expectations at the silver and gold boundaries.

GX cannot validate a streaming DataFrame (great_expectations#7337), so each ``foreachBatch``
validates its micro-batch. A ``Quality`` object holds one ephemeral GX context per query,
built once. Every check has a policy, as in Databricks pipelines:

- ``warn``: the result is recorded in ``quality/results``, and the rows go on;
- ``drop``: rows that fail go to ``silver/quarantine`` with reason ``expectation:<name>``;
- ``fail``: the query stops with ``QualityFailure``, naming the expectation and the batch.

A row-level check carries its rule twice: as the GX expectation, which produces the recorded
result, and as a Spark predicate, which picks the rows to drop. A test keeps the two counts
equal. Checks over a whole batch (uniqueness, funnel monotonicity) can only warn or fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import great_expectations as gx
from great_expectations.data_context.types.base import ProgressBarsConfig
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.config import Policy, QualitySettings
from pipelines.contract import STEPS
from pipelines.io import sinks

log = logging.getLogger(__name__)


# Counts, without GX's sample of offending values: one Spark job per metric fewer (7 jobs, not
# 15, for the silver suite). The offending rows themselves are in silver/quarantine.
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


class QualityFailure(RuntimeError):
    """An expectation with the ``fail`` policy did not hold."""


@dataclass(frozen=True)
class Check:
    name: str
    expectation: Callable[[], gx.expectations.Expectation]
    policy: Policy
    passes: Column | None = None  # the row-level rule, for ``drop``; None: a batch-level check


def silver_checks(q: QualitySettings, now: datetime) -> list[Check]:
    """``silver/events``: keys, allowed types, ranges, clock skew, uniqueness per batch."""
    E = gx.expectations
    future = now + q.future_tolerance
    return [
        Check("event_id_not_null", lambda: E.ExpectColumnValuesToNotBeNull(column="event_id"), "drop",
              F.col("event_id").isNotNull()),
        Check("user_id_not_null", lambda: E.ExpectColumnValuesToNotBeNull(column="user_id"), "drop",
              F.col("user_id").isNotNull()),
        Check("event_type_allowed",
              lambda: E.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(STEPS)), "drop",
              F.col("event_type").isin(*STEPS)),
        Check("price_in_range",
              lambda: E.ExpectColumnValuesToBeBetween(column="price", min_value=0, max_value=q.max_price),
              "drop", F.col("price").isNull() | F.col("price").between(0, q.max_price)),
        Check("quantity_in_range",
              lambda: E.ExpectColumnValuesToBeBetween(column="quantity", min_value=1,
                                                      max_value=q.max_quantity),
              "drop", F.col("quantity").isNull() | F.col("quantity").between(1, q.max_quantity)),
        Check("event_time_not_future",
              lambda: E.ExpectColumnValuesToBeBetween(column="event_time", max_value=future), "drop",
              F.col("event_time") <= F.lit(future)),
        Check("event_id_unique", lambda: E.ExpectColumnValuesToBeUnique(column="event_id"), "fail"),
    ]


def funnel_checks(q: QualitySettings, now: datetime) -> list[Check]:
    """``gold/campaign_funnel``: keys present, and no step reached by more sessions than the one
    before it."""
    E = gx.expectations
    checks = [Check("funnel_keys_not_null",
                    lambda: E.ExpectColumnValuesToNotBeNull(column="campaign_id"), "fail")]
    for a, b in zip(STEPS, STEPS[1:], strict=False):
        checks.append(Check(
            f"funnel_{b}_le_{a}",
            lambda a=a, b=b: E.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=f"reached_{a}", column_B=f"reached_{b}", or_equal=True),
            "fail"))
    return checks


def named(check: Check) -> gx.expectations.Expectation:
    """The check's expectation, carrying the check's name in its ``meta``."""
    expectation = check.expectation()
    expectation.meta = {"name": check.name}
    return expectation


SUITES: dict[str, Callable[[QualitySettings, datetime], list[Check]]] = {
    "silver_events": silver_checks,
    "campaign_funnel": funnel_checks,
}


def check_names() -> list[str]:
    now = datetime.now(UTC)
    return [c.name for suite in SUITES.values() for c in suite(QualitySettings(), now)]


class Quality:
    """The checks of one suite for one query: one GX context, reused by every batch."""

    def __init__(self, spark: SparkSession, lake: str, suite: str, settings: QualitySettings,
                 query: str):
        unknown = set(settings.policies) - set(check_names())
        if unknown:
            raise ValueError(f"quality.policies: unknown expectation(s) {sorted(unknown)}; "
                             f"known: {check_names()}")
        self.suite, self.q, self.query = suite, settings, query
        self.results = T.ensure(spark, lake, T.QUALITY_RESULTS)
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_spark("lake").add_dataframe_asset(suite)
        self.batches = asset.add_batch_definition_whole_dataframe("micro-batch")

    def checks(self, now: datetime) -> list[Check]:
        return [Check(c.name, c.expectation, self.q.policies.get(c.name, c.policy), c.passes)
                for c in SUITES[self.suite](self.q, now)]

    def validate(self, df: DataFrame, batch_id: int, app_id: str) -> list[str]:
        """Validate ``df`` with the suite, record the results in ``quality/results`` (once per
        batch id), warn about failed ``warn``/``drop`` checks, and raise ``QualityFailure`` on a
        failed ``fail`` check. Returns the names of the failed ``drop`` checks. ``df`` should
        be cached: GX runs one Spark job per metric."""
        now = datetime.now(UTC)
        checks = self.checks(now)
        suite = gx.ExpectationSuite(name=self.suite)
        for c in checks:
            suite.add_expectation(named(c))
        sampled = self.q.sample_fraction is not None
        target = df.sample(fraction=self.q.sample_fraction, seed=batch_id).persist() if sampled else df
        started = time.perf_counter()
        try:
            outcome = self.batches.get_batch(batch_parameters={"dataframe": target}).validate(
                suite, result_format=RESULT_FORMAT)
        finally:
            if sampled:
                target.unpersist()
        validated = time.perf_counter()
        # GX does not keep the suite's order in its results: match them by name.
        by_name = {r.expectation_config.meta["name"]: r for r in outcome.results}
        pairs = [(c, by_name[c.name]) for c in checks]
        rows = [(batch_id, self.query, self.suite, c.name, c.policy, bool(r.success),
                 int(r.result.get("unexpected_count") or 0), int(r.result.get("element_count") or 0),
                 sampled, now) for c, r in pairs]
        record = df.sparkSession.createDataFrame(rows, T.QUALITY_RESULTS.schema)
        sinks.append_once(record, self.results, f"{app_id}-{self.suite}", batch_id)
        log.info("%s batch %d: validated in %.2f s, results recorded in %.2f s", self.suite, batch_id,
                 validated - started, time.perf_counter() - validated)
        failed = [(c, r) for c, r in pairs if not r.success]
        for c, r in failed:
            n = r.result.get("unexpected_count")
            if c.policy == "fail":
                raise QualityFailure(f"expectation {c.name} failed on {self.suite} batch {batch_id}"
                                     f" ({n} unexpected of {r.result.get('element_count')} rows)")
            log.warning("expectation %s: %s unexpected rows in %s batch %d (%s)", c.name, n, self.suite,
                        batch_id, c.policy)
        return [c.name for c, _ in failed if c.policy == "drop"]

    def apply(self, df: DataFrame, batch_id: int, app_id: str) -> tuple[DataFrame, DataFrame | None]:
        """``validate``, then the rows that go on and the rows dropped (``split``), or None
        when the whole batch held every ``drop`` check: no row filter runs then. A sample
        proves nothing about the rest, so with ``sample_fraction`` one aggregation over the
        whole batch asks the drop predicates first."""
        failed = self.validate(df, batch_id, app_id)
        if self.q.sample_fraction is None and not failed:
            return df, None
        kept, dropped = self.split(df)
        if self.q.sample_fraction is not None and dropped is not None and dropped.isEmpty():
            return df, None
        return kept, dropped

    def split(self, df: DataFrame) -> tuple[DataFrame, DataFrame | None]:
        """The rows that go on, and the rows a ``drop`` check rejects (with a ``_reason``
        column: ``expectation:<name>`` of the first check the row breaks), or None when no
        check drops. Decided per row by the checks' Spark predicates, over every row of ``df``
        (with ``sample_fraction`` too); a null value passes, as in GX's column checks."""
        drops = [c for c in self.checks(datetime.now(UTC)) if c.policy == "drop" and c.passes is not None]
        if not drops:
            return df, None
        reason = F.lit(None).cast("string")
        for c in reversed(drops):
            broken = ~F.coalesce(c.passes, F.lit(True))
            reason = F.when(broken, F.lit(f"expectation:{c.name}")).otherwise(reason)
        marked = df.withColumn("_reason", reason)
        kept = marked.where(F.col("_reason").isNull()).drop("_reason")
        return kept, marked.where(F.col("_reason").isNotNull())


def dropped_to_quarantine(dropped: DataFrame) -> DataFrame:
    """Dropped silver rows as ``silver/quarantine`` rows: the event as JSON, and its reason."""
    cols = [c for c in dropped.columns if c != "_reason"]
    given = {"raw": F.to_json(F.struct(*cols)), "reason": F.col("_reason"),
             "ingest_time": F.col("ingest_time"), "quarantine_time": F.current_timestamp(),
             "ingest_date": F.to_date("ingest_time")}
    return dropped.select(*[given.get(c, F.lit(None)).alias(c) for c in T.SILVER_QUARANTINE.columns]
                          ).transform(T.conform(T.SILVER_QUARANTINE))


TABLE_OF_SUITE = {"silver_events": T.SILVER_EVENTS, "campaign_funnel": T.CAMPAIGN_FUNNEL}


def build_docs(spark: SparkSession, s, out=None) -> str:
    """GX Data Docs for every suite, validated against its whole table as it is now, in a
    file-backed GX project under ``<lake>/_quality/gx``. Returns the site's index.html."""
    from pathlib import Path

    root = Path(s.lake) / "_quality"
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = Path(out) if out else root / "docs"
    sites = context.get_site_names()
    if "funnelhouse" not in sites:
        context.add_data_docs_site("funnelhouse", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    source = context.data_sources.add_or_update_spark("lake")
    now = datetime.now(UTC)
    from delta.tables import DeltaTable

    for name, make in SUITES.items():
        path = s.table(TABLE_OF_SUITE[name].name)
        if not DeltaTable.isDeltaTable(spark, path):
            continue
        df = spark.read.format("delta").load(path)
        asset = source.add_dataframe_asset(name)
        batches = asset.add_batch_definition_whole_dataframe("table")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=name))
        for c in make(s.quality, now):
            suite.add_expectation(named(c))
        suite.save()
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}-table", data=batches, suite=suite))
        checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
            name=f"{name}-docs", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["funnelhouse"])]))
        checkpoint.run(batch_parameters={"dataframe": df})
    context.build_data_docs(site_names=["funnelhouse"])
    return str(site / "index.html")
