"""Small shared types and helpers."""

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

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


def string_lists(column: pd.Series) -> pa.ListArray | pa.ChunkedArray:
    """A pandas column of string lists (lists, arrays or None; or Arrow lists, kept as they
    are) as an Arrow ``list<string>`` array, for list work in Arrow (flatten, parent indices)."""
    return pa.array(column, pa.list_(pa.string()), from_pandas=True)


def distinct_lists(owner: np.ndarray, values: pa.Array | pa.ChunkedArray | np.ndarray, n: int
                   ) -> pa.ListArray:
    """Per owner ``0 .. n-1``, the sorted distinct non-null ``values`` paired with it (``owner``
    and ``values`` aligned; an empty list for an owner with none), as an Arrow ``list<string>``
    built from offsets: no Python list per owner. A session's product ids or countries, a
    user's countries, an address's users. ``values`` are best given as Arrow strings: they are
    coded by Arrow's hash (a numpy array of Python strings is converted first)."""
    if isinstance(values, np.ndarray):
        values = pa.array(values, pa.string(), from_pandas=True)
    coded = pc.dictionary_encode(values)
    if isinstance(coded, pa.ChunkedArray):
        coded = coded.unify_dictionaries().combine_chunks()
    present = coded.indices.is_valid().to_numpy(zero_copy_only=False)
    names = coded.dictionary
    by_name = pc.sort_indices(names).to_numpy()  # strings in code point order (UTF-8 bytes)
    rank = np.empty(len(names), np.int64)
    rank[by_name] = np.arange(len(names))
    codes = rank[coded.indices.filter(present).to_numpy()] if len(names) else np.zeros(0, np.int64)
    width = max(len(names), 1)
    pairs = sorted_distinct(owner[present].astype(np.int64) * width + codes)
    at, code = np.divmod(pairs, width)
    offsets = np.searchsorted(at, np.arange(n + 1)).astype(np.int32)
    return pa.ListArray.from_arrays(offsets, names.take(by_name).cast(pa.string()).take(code))


def keyed_lists(keys: pa.Array | pa.ChunkedArray, paired: pa.Array | pa.ChunkedArray,
                values: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Per key of ``keys`` (distinct), the sorted distinct non-null ``values`` paired with it
    (``paired`` and ``values`` aligned; ``distinct_lists``; an empty list when none): a user's
    countries, an address's users."""
    known = pc.is_valid(paired)
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    owner = pc.index_in(paired.filter(known), value_set=keys).to_numpy()
    return distinct_lists(owner, values.filter(known), len(keys))


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of an int64 array, by a sort and a neighbour test: numpy 2's
    ``np.unique`` hashes first, about 40x slower on a micro-batch's (owner, value) pairs and
    5x on its 200k journey keys."""
    ordered = np.sort(values)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(ordered) else ordered


def sorted_by(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df`` sorted by ``keys`` (ascending, nulls last, stable; a new range index), as
    ``sort_values`` sorts it (strings in code point order), with the sort done by Arrow: a
    few times faster on string keys."""
    keyed = pa.table({k: pa.array(df[k], from_pandas=True) for k in keys})
    order = pc.sort_indices(keyed, sort_keys=[(k, "ascending", "at_end") for k in keys])
    return df.take(order.to_numpy()).reset_index(drop=True)


def from_epoch_ms(ms: int | None) -> datetime | None:
    """A naive UTC time from epoch ms (None stays None)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def epoch_ms(t: datetime | None) -> int | None:
    """Epoch ms of a naive UTC time (None stays None)."""
    return None if t is None else int(t.replace(tzinfo=UTC).timestamp() * 1000)


def utc_now(now: datetime | None = None) -> datetime:
    """``now`` (default: the clock) as a naive UTC time, as Spark's timestamps come to Python:
    a driver-side row's ``created_at``."""
    return (now or datetime.now(UTC)).replace(tzinfo=None)
