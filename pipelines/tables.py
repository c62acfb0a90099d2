"""Every Delta table of the lake: its path under the lake root, schema and partitioning.

Writers create tables from here before a stream starts, so a MERGE target always exists and
a schema never drifts; ``docs/tables.md`` documents the same columns (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql.types import (
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


def _schema(*cols: tuple[str, object]) -> StructType:
    return StructType([StructField(name, dtype) for name, dtype in cols])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Table:
    name: str  # path under the lake root, e.g. "silver/events"
    schema: StructType
    partition_by: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.fieldNames()


STR, TS, DATE, INT, LONG = StringType(), TimestampType(), DateType(), IntegerType(), LongType()
DBL, BOOL = DoubleType(), BooleanType()

BRONZE_EVENTS = Table("bronze/events", _schema(
    ("raw", STR), ("source_file", STR), ("kafka_topic", STR), ("kafka_partition", INT),
    ("kafka_offset", LONG), ("kafka_timestamp", TS), ("kafka_key", STR),
    ("ingest_time", TS), ("ingest_date", DATE),
), partition_by=("ingest_date",))

SILVER_EVENTS = Table("silver/events", _schema(
    ("event_id", STR), ("event_type", STR), ("step", INT), ("event_time", TS), ("user_id", STR),
    ("tracking_id", STR), ("campaign_id", STR), ("ad_id", STR), ("product_id", STR), ("price", DBL),
    ("quantity", INT), ("ip", STR), ("user_agent", STR), ("event_date", DATE), ("ingest_time", TS),
    ("late", BOOL),
), partition_by=("event_date",))

SILVER_QUARANTINE = Table("silver/quarantine", _schema(
    ("raw", STR), ("reason", STR), ("ingest_time", TS), ("source_file", STR), ("kafka_topic", STR),
    ("kafka_partition", INT), ("kafka_offset", LONG), ("quarantine_time", TS), ("ingest_date", DATE),
), partition_by=("ingest_date",))

ALL: list[Table] = [BRONZE_EVENTS, SILVER_EVENTS, SILVER_QUARANTINE]


def ensure(spark: SparkSession, lake: str, table: Table) -> str:
    """Create ``table`` under the ``lake`` root unless it exists; return its path."""
    path = f"{lake}/{table.name}"
    (DeltaTable.createIfNotExists(spark)
        .location(path)
        .addColumns(table.schema)
        .partitionedBy(*table.partition_by)
        .execute())
    return path
