"""Tables whose rows add up: ``gold/user_profile`` and ``gold/ip_profile`` (``Table.fold``).

A profile row per user can only be changed in place by rewriting its file: delta-rs merges
copy on write (it reads deletion vectors but does not write them), and a micro-batch's users
are spread over the whole key space, so every MERGE rewrote the whole table: 0.05 s on an
empty lake, 0.65 s a table on a lake of 10M events (docs/performance.md). So a folded table
is appended to instead: each micro-batch adds one row per key it touched, holding what the
batch adds (its sessions, its revenue, its earliest start). A key's value is the fold of its
rows: sums, the earliest or latest time, the sorted union of the lists. That is the
aggregation merge engine of Apache Paimon, or ClickHouse's AggregatingMergeTree, on Delta.

Every reader of the project folds: ``funnelhouse sql`` and the dashboard (a DuckDB view,
``fold_sql``), the anomaly scorer (``fold_arrow``) and Spark readers (``fold_spark``).
``funnelhouse maintain`` folds the stored rows into one per key (``fold_arrow``, under the
gold lease), so between two runs of it a plain Delta read sees a key once per micro-batch
that touched it, and afterwards once.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.tables import Table

_ARROW = {"sum": "sum", "min": "min", "max": "max"}
# A sum's DuckDB type by the column's Spark type: a bigint stays one (DuckDB sums it as HUGEINT).
_DUCK_SUM = {"long": "BIGINT", "integer": "BIGINT", "double": "DOUBLE"}


def fold_arrow(rows: pa.Table, table: Table) -> pa.Table:
    """Rows of ``table`` (its key and any of its folded columns) -> one row per key, sorted by
    the key, with the columns ``rows`` has, in the table's order."""
    from pipelines.common import keyed_lists  # with pandas: not for ``funnelhouse sql``'s start

    (key,) = table.key
    folds = [(c, how) for c, how in table.fold if c in rows.column_names]
    plain = [(c, _ARROW[how]) for c, how in folds if how != "union"]
    out = rows.group_by(key, use_threads=False).aggregate(plain)
    out = out.select([key, *[f"{c}_{f}" for c, f in plain]])
    out = out.rename_columns([key, *[c for c, _ in plain]]).sort_by(key)
    for c, how in folds:
        if how == "union":
            lists = rows[c].combine_chunks()
            paired = rows[key].combine_chunks().take(pc.list_parent_indices(lists))
            out = out.append_column(c, keyed_lists(out[key], paired, pc.list_flatten(lists)))
    return out.select([c for c in table.columns if c in rows.column_names])


def fold_sql(table: Table, source: str) -> str:
    """DuckDB SQL: the rows of ``source`` (a view or table of ``table``'s columns) folded,
    one row per key."""
    (key,) = table.key
    how = dict(table.fold)
    sql = {"sum": "CAST(sum({c}) AS {t})", "min": "min({c})", "max": "max({c})",
           "union": "list_sort(list_distinct(flatten(list({c}))))"}
    types = {f.name: _DUCK_SUM.get(f.dataType.typeName(), "DOUBLE") for f in table.schema.fields}
    columns = [key if c == key else sql[how[c]].format(c=f'"{c}"', t=types[c]) + f' AS "{c}"'
               for c in table.columns]
    return f"SELECT {', '.join(columns)} FROM {source} GROUP BY {key}"


def fold_spark(table: Table):
    """A transform: a Spark DataFrame of ``table``'s rows -> one row per key."""
    (key,) = table.key
    how = dict(table.fold)
    spark = {"sum": F.sum, "min": F.min, "max": F.max,
             "union": lambda c: F.array_sort(F.array_distinct(F.flatten(F.collect_list(c))))}

    def _(df: DataFrame) -> DataFrame:
        folded = df.groupBy(key).agg(*[spark[how[c]](c).alias(c) for c in table.columns if c != key])
        return folded.select(*[F.col(f.name).cast(f.dataType) for f in table.schema.fields])
    return _
