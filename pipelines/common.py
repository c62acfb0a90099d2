"""Small shared types."""

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

Transform = Callable[[DataFrame], DataFrame]


class MissingColumns(ValueError):
    """A transform was given a DataFrame without the columns it reads."""


def require_columns(df: DataFrame, *columns: str) -> DataFrame:
    """Fail fast, naming the absent columns, before a transform runs (quinn's
    ``validate_presence_of_columns``)."""
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise MissingColumns(f"missing columns {absent}; got {df.columns}")
    return df


def unix_millis(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """Spark's ``unix_millis`` over an Arrow timestamp column (for the stream's driver-side
    twins of a Spark input transform)."""
    return pc.cast(pc.cast(times, pa.timestamp("ms", times.type.tz), safe=False), pa.int64())


def in_workers(rows: Callable[[pa.Table], pa.Table], schema: StructType) -> Transform:
    """``rows``, a function of Arrow tables that the stream calls on its driver, as a Spark
    transform: the very same function over each partition, in Spark's Python workers
    (``mapInArrow``). So a batch build and the stream share one implementation, not twins."""
    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from rows(pa.Table.from_batches([batch])).to_batches()
    return lambda df: df.mapInArrow(per_partition, schema)
