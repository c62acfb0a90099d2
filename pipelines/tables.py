"""Every Delta table of the lake: its path under the lake root, schema and partitioning.

Writers create tables from here before a stream starts, so a MERGE target always exists and
a schema never drifts; ``docs/tables.md`` documents the same columns (a test keeps them equal).

Every table checkpoints its Delta log every ``CHECKPOINT_INTERVAL`` commits instead of Delta's
default 10: a streaming table commits about once a second, and a Delta checkpoint (written
inside the commit that triggers it) took 4-11 s here, which a micro-batch would wait for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from deltalake import DeltaTable as RsTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.io.delta_log import column_names
from pipelines.steps import STEPS

CHECKPOINT_INTERVAL = 100


def _schema(*cols: tuple[str, object]) -> StructType:
    return StructType([StructField(name, dtype) for name, dtype in cols])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Table:
    name: str  # path under the lake root, e.g. "silver/events"
    schema: StructType
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()  # the columns that identify a row (MERGE keys), if any
    stats: tuple[str, ...] = ()  # columns Delta keeps file statistics for (default: the first 32)
    # A time the key fixes (rows with equal keys have equal values of it, to the millisecond),
    # so an insert of new keys need only match the table's rows from the batch's earliest on.
    key_time: str | None = None
    # How rows with one key add up, per other column: "sum", "min", "max" (nulls ignored) or
    # "union" (of string lists, sorted). A table with a fold is appended to, not merged into:
    # a key may have several rows, and its value is their fold (``io/folds.py``).
    fold: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.fieldNames()


STR, TS, DATE, INT, LONG = StringType(), TimestampType(), DateType(), IntegerType(), LongType()
DBL, BOOL = DoubleType(), BooleanType()

BRONZE_EVENTS = Table("bronze/events", _schema(
    ("raw", STR), ("source_file", STR), ("kafka_topic", STR), ("kafka_partition", INT),
    ("kafka_offset", LONG), ("kafka_timestamp", TS), ("kafka_key", STR),
    ("ingest_time", TS), ("ingest_date", DATE),
), partition_by=("ingest_date",), stats=("ingest_time", "kafka_partition", "kafka_offset"))

SILVER_EVENTS = Table("silver/events", _schema(
    ("event_id", STR), ("event_type", STR), ("step", INT), ("event_time", TS), ("user_id", STR),
    ("tracking_id", STR), ("campaign_id", STR), ("ad_id", STR), ("product_id", STR), ("price", DBL),
    ("quantity", INT), ("ip_hash", STR), ("ip_prefix", STR), ("user_agent", STR), ("ip_country", STR),
    ("ip_region", STR),
    ("event_date", DATE), ("ingest_time", TS), ("late", BOOL),
), partition_by=("event_date",), key=("event_id",),
   stats=("event_time", "ingest_time", "event_type", "tracking_id", "user_id"))

SILVER_QUARANTINE = Table("silver/quarantine", _schema(
    ("raw", STR), ("reason", STR), ("ingest_time", TS), ("source_file", STR), ("kafka_topic", STR),
    ("kafka_partition", INT), ("kafka_offset", LONG), ("quarantine_time", TS), ("ingest_date", DATE),
), partition_by=("ingest_date",), stats=("reason", "ingest_time", "quarantine_time"))

STRS = ArrayType(StringType())
_TO_STEP = tuple((f"seconds_to_{s}", DBL) for s in STEPS[1:])

SESSION_FUNNEL = Table("gold/session_funnel", _schema(
    ("session_id", STR), ("tracking_id", STR), ("session_start", TS), ("session_end", TS),
    ("user_id", STR), ("campaign_id", STR), ("funnel_level", INT), ("event_count", LONG),
    ("clicks", LONG), ("adds", LONG), ("purchases", LONG), ("items", LONG), ("revenue", DBL),
    ("added_products", STRS), ("purchased_products", STRS), ("countries", STRS),
    ("ip_hashes", STRS), *_TO_STEP,
    ("is_open", BOOL),
    ("session_date", DATE),
    ("open_slot", LONG),
), partition_by=("session_date", "is_open", "open_slot"), key=("session_id",))

CAMPAIGN_FUNNEL = Table("gold/campaign_funnel", _schema(
    ("campaign_id", STR), ("window_start", TS), ("window_end", TS), ("sessions", LONG),
    *((f"reached_{s}", LONG) for s in STEPS), *((f"conversion_{s}", DBL) for s in STEPS[1:]),
    ("closed", BOOL), ("window_date", DATE),
), partition_by=("window_date",), key=("campaign_id", "window_start"))

# Per campaign: totals (additive, kept up to date from each micro-batch's session changes)
# and what follows from them across campaigns (conversion, the budget recommendation).
PERFORMANCE_TOTALS = ("sessions", "clicks", "purchases", "revenue")
CAMPAIGN_PERFORMANCE = Table("gold/campaign_performance", _schema(
    ("campaign_id", STR), ("sessions", LONG), ("clicks", LONG), ("purchases", LONG),
    ("purchase_conversion", DBL), ("revenue", DBL), ("smoothed_conversion", DBL),
    ("current_budget_share", DBL), ("recommended_budget_share", DBL), ("budget_change", DBL),
    ("budget_rule", STR),
), key=("campaign_id",))

PRODUCT_ABANDONMENT = Table("gold/product_abandonment", _schema(
    ("product_id", STR), ("adds", LONG), ("purchases", LONG), ("direct_purchases", LONG),
    ("abandonment_rate", DBL),
), key=("product_id",))

ALERTS = Table("gold/alerts", _schema(
    ("alert_id", STR), ("kind", STR), ("rule", STR), ("campaign_id", STR), ("window_start", TS),
    ("window_end", TS), ("metric", STR), ("value", DBL), ("threshold", DBL), ("volume", LONG),
    ("message", STR), ("created_at", TS),
), key=("alert_id",), key_time="window_start")

CART_REMINDERS = Table("gold/cart_reminders", _schema(
    ("reminder_id", STR), ("user_id", STR), ("tracking_id", STR), ("session_start", TS),
    ("session_end", TS), ("adds", LONG), ("products", STRS), ("created_at", TS),
), key=("reminder_id",), key_time="session_start")

RETARGET_OFFERS = Table("gold/retarget_offers", _schema(
    ("offer_id", STR), ("user_id", STR), ("campaign_id", STR), ("tracking_id", STR),
    ("click_time", TS), ("due_time", TS), ("created_at", TS),
), key=("offer_id",), key_time="click_time")

FLAG_SCHEMA = _schema(
    ("flag_id", STR), ("rule", STR), ("entity_type", STR), ("entity_id", STR),
    ("first_event_time", TS), ("last_event_time", TS), ("event_count", LONG), ("measure", STR),
    ("measure_value", LONG), ("peak_value", LONG), ("threshold", LONG), ("window_seconds", DBL),
    ("evidence_event_ids", STRS),
)
FRAUD_FLAGS = Table("gold/fraud_flags", FLAG_SCHEMA, key=("flag_id",), key_time="first_event_time")

# Per user: closed sessions and fraud flags so far (``gold/profiles.py``). Each gold batch
# appends a row per user it touched; ``funnelhouse maintain`` folds them into one per user.
USER_PROFILE = Table("gold/user_profile", _schema(
    ("user_id", STR), ("first_seen", TS), ("last_seen", TS), ("sessions", LONG), ("purchases", LONG),
    ("revenue", DBL), ("fraud_flags", LONG), ("countries", STRS), ("first_session_end", TS),
), key=("user_id",), fold=(("first_seen", "min"), ("last_seen", "max"), ("sessions", "sum"),
                           ("purchases", "sum"), ("revenue", "sum"), ("fraud_flags", "sum"),
                           ("countries", "union"), ("first_session_end", "min")))

# Per keyed IP hash: closed sessions and the users seen on it so far, appended and folded alike.
IP_PROFILE = Table("gold/ip_profile", _schema(
    ("ip_hash", STR), ("first_seen", TS), ("last_seen", TS), ("sessions", LONG), ("users", STRS),
), key=("ip_hash",), fold=(("first_seen", "min"), ("last_seen", "max"), ("sessions", "sum"),
                           ("users", "union")))

# The champion anomaly model's score of each closed session (``pipelines/anomaly/``).
ANOMALY_SCORES = Table("gold/anomaly_scores", _schema(
    ("session_id", STR), ("tracking_id", STR), ("user_id", STR), ("anomaly_score", DBL),
    ("is_anomaly", BOOL), ("model_version", INT), ("scored_at", TS),
), key=("session_id", "model_version"))

QUALITY_RESULTS = Table("quality/results", _schema(
    ("batch_id", LONG), ("query", STR), ("suite", STR), ("expectation", STR), ("policy", STR),
    ("success", BOOL), ("unexpected_count", LONG), ("element_count", LONG), ("validated_at", TS),
))

# The delivery outbox (``pipelines/notify/``): one row per notice and channel, recorded before
# it is sent. ``notification_id`` is derived from the source row's id and the channel.
NOTIFICATIONS = Table("ops/notifications", _schema(
    ("notification_id", STR), ("kind", STR), ("channel", STR), ("source_id", STR), ("recipient", STR),
    ("subject", STR), ("payload", STR), ("status", STR), ("attempts", INT), ("last_error", STR),
    ("created_at", TS), ("sent_at", TS), ("created_date", DATE),
), partition_by=("created_date",), key=("notification_id",),
   stats=("notification_id", "kind", "status", "recipient"))

# The gold tables the batch build (and so a backfill) makes from silver, and every table the
# gold stream writes: those plus the anomaly scores, which come from a registered model.
GOLD: list[Table] = [SESSION_FUNNEL, CAMPAIGN_FUNNEL, CAMPAIGN_PERFORMANCE, PRODUCT_ABANDONMENT, ALERTS,
                     CART_REMINDERS, RETARGET_OFFERS, FRAUD_FLAGS, USER_PROFILE, IP_PROFILE]
GOLD_STREAM: list[Table] = [*GOLD, ANOMALY_SCORES]
ALL: list[Table] = [BRONZE_EVENTS, SILVER_EVENTS, SILVER_QUARANTINE, *GOLD_STREAM, QUALITY_RESULTS,
                    NOTIFICATIONS]


def conform(table: Table) -> Callable[[DataFrame], DataFrame]:
    """Select and cast ``table``'s columns, in order (a missing column is an error)."""
    def _(df: DataFrame) -> DataFrame:
        return df.select(*[F.col(f.name).cast(f.dataType) for f in table.schema.fields])
    return _


class SchemaMismatch(RuntimeError):
    """A stored table's columns are not the ones this release writes."""


def check_columns(table: Table, stored: list[str], path: str) -> None:
    """Refuse a stored ``table`` whose columns differ from ``table.columns``, naming the
    difference and what to do (docs/operations.md#changing-a-schema)."""
    missing = [c for c in table.columns if c not in stored]
    extra = [c for c in stored if c not in table.columns]
    if missing or extra:
        raise SchemaMismatch(
            f"{path} was written by another release: it lacks {', '.join(missing) or 'nothing'} and has "
            f"{', '.join(extra) or 'nothing'} this release does not write. Rebuild it: move the table (and, "
            "for silver or gold, <lake>/_checkpoints/ of its query) aside, then run `funnelhouse run` or "
            "`funnelhouse backfill` (docs/operations.md#changing-a-schema)")


def ensure(spark: SparkSession, lake: str, table: Table) -> str:
    """Create ``table`` under the ``lake`` root unless it exists; return its path.

    A local lake's tables are created with delta-rs (a few ms each; Spark's
    ``createIfNotExists`` takes about a second per table, which a fresh lake of 13 tables
    would pay at every query start). Object stores go through Spark, which holds their
    credentials."""
    path = f"{lake}/{table.name}"
    config = {"delta.checkpointInterval": str(CHECKPOINT_INTERVAL)}
    if table.stats:  # writing statistics for every column costs CPU no read gets back
        config["delta.dataSkippingStatsColumns"] = ",".join(table.stats)
    local = path.removeprefix("file:")
    if "://" not in local:
        log = Path(local) / "_delta_log"
        if not any(log.glob("*.json")):
            try:
                RsTable.create(local, to_arrow_schema(table.schema, timezone="UTC"), mode="ignore",
                               partition_by=list(table.partition_by) or None, configuration=config)
            except Exception:  # another query created it meanwhile
                if not any(log.glob("*.json")):
                    raise
        else:
            stored = column_names(local) or RsTable(local).schema().to_arrow().names
            check_columns(table, stored, path)
        return path
    builder = (DeltaTable.createIfNotExists(spark).location(path).addColumns(table.schema)
               .partitionedBy(*table.partition_by))
    for key, value in config.items():
        builder = builder.property(key, value)
    builder.execute()
    return path
