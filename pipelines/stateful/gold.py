"""The gold query's one stateful operator, shared by its three processors.

Spark runs at most one ``applyInPandasWithState`` per query, and one query is cheaper than
three (each trigger costs a fixed few hundred ms here). So the processors (sessions, fraud,
offers) share one: their inputs are unioned with a ``proc`` column, grouped by
(``proc``, ``bucket``), and each group is handed to its processor with a view of its own
state fields. Each processor stays a plain module of its own; this one only routes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout
from pyspark.sql.types import StructField, StructType

from pipelines.common import Transform

# PySpark's applyInPandasWithState serializer (pyspark/sql/pandas/serializers.py) pads each
# Arrow batch with an all-None frame when a chunk has fewer output rows than state rows (or
# the reverse) and concatenates it with pandas 2, which warns that such frames will count for
# dtypes in pandas 3. The padding is PySpark's, not ours, and its rows are dropped on the JVM
# side, so the dtype question never reaches a value. This module is imported by every Python
# worker that runs the operator, so the filter is set exactly there, for that warning only.
warnings.filterwarnings("ignore", message="The behavior of DataFrame concatenation with empty or all-NA",
                        category=FutureWarning, module="pyspark.sql.pandas.serializers")

Process = Callable[[tuple, Iterator[pd.DataFrame], GroupState], Iterator[pd.DataFrame]]


@dataclass(frozen=True)
class Processor:
    name: str
    input: Transform  # watermarked silver events -> its rows, with ``bucket`` and ``event_time``
    process: Process  # the applyInPandasWithState function of one of its groups
    state: StructType  # its state fields
    output: StructType  # what it emits, ``kind`` included


class StateView:
    """One processor's slice of the shared state row: the ``GroupState`` API it was written for."""

    def __init__(self, state: GroupState, fields: slice, width: int):
        self._state, self._fields, self._width = state, fields, width

    @property
    def exists(self) -> bool:
        return self._state.exists

    @property
    def get(self) -> tuple:
        return tuple(self._state.get)[self._fields]

    @property
    def hasTimedOut(self) -> bool:  # noqa: N802 - GroupState's name
        return self._state.hasTimedOut

    def update(self, values: tuple) -> None:
        row = [None] * self._width
        row[self._fields] = values
        self._state.update(tuple(row))

    def remove(self) -> None:
        self._state.remove()

    def setTimeoutTimestamp(self, ms: int) -> None:  # noqa: N802
        self._state.setTimeoutTimestamp(ms)

    def getCurrentWatermarkMs(self) -> int:  # noqa: N802
        return self._state.getCurrentWatermarkMs()


def _union_schema(schemas: list[StructType]) -> StructType:
    fields: dict[str, StructField] = {}
    for schema in schemas:
        for f in schema.fields:
            if f.name in fields and fields[f.name].dataType != f.dataType:
                raise TypeError(f"processors disagree on the type of {f.name!r}")
            fields.setdefault(f.name, f)
    return StructType(list(fields.values()))


def _widen(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with every output column, in order; another processor's columns are None
    (not NaN, which Spark cannot read as an array or a string)."""
    missing = {c: pd.Series([None] * len(frame), index=frame.index, dtype=object)
               for c in columns if c not in frame.columns}
    return pd.concat([frame, pd.DataFrame(missing, index=frame.index)], axis=1)[columns] \
        if missing else frame[columns]


def run(events: DataFrame, processors: list[Processor]) -> DataFrame:
    """Watermarked events -> every processor's output in one stream, told apart by ``kind``."""
    state = StructType([f for p in processors for f in p.state.fields])
    output = _union_schema([p.output for p in processors])
    slices, start = {}, 0
    for p in processors:
        slices[p.name] = slice(start, start + len(p.state.fields))
        start += len(p.state.fields)
    by_name = {p.name: p for p in processors}

    def dispatch(key: tuple, batches: Iterator[pd.DataFrame], group: GroupState) -> Iterator[pd.DataFrame]:
        proc, bucket = key
        view = StateView(group, slices[proc], len(state.fields))
        for frame in by_name[proc].process((bucket,), batches, view):
            yield _widen(frame, output.fieldNames())

    inputs = [events.transform(p.input).withColumn("proc", F.lit(p.name)) for p in processors]
    rows = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), inputs)
    return rows.groupBy("proc", "bucket").applyInPandasWithState(
        dispatch, output, state, "append", GroupStateTimeout.EventTimeTimeout)
