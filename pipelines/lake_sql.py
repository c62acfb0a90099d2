"""SQL over the lake without a JVM: DuckDB over the Delta tables, listed by delta-rs.

Every Delta table under the lake root is a view named after its path, ``/`` -> ``_``:
``gold/session_funnel`` is ``gold_session_funnel``, ``ops/notifications`` is
``ops_notifications``. delta-rs reads the table's log and gives the Parquet files of its
current version; the view is DuckDB's own Parquet reader over exactly those files (partition
values from the Hive-style paths, typed from the Delta schema), so DuckDB reads only the
columns and row groups a query needs. A table whose protocol uses deletion vectors or column
mapping (none of ours do) is read through delta-rs instead, which applies them. No Spark
session and no pandas: a query answers in well under a second where ``spark.read`` needs
about 15 s before its first row (docs/observability.md).

Used by ``funnelhouse sql`` and the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
from deltalake import DeltaTable

from pipelines import tables as T
from pipelines.io.folds import fold_sql


class UnknownLake(ValueError):
    pass


def table_paths(lake: str | Path) -> dict[str, Path]:
    """View name -> folder of every Delta table under ``lake`` (two levels: layer/name)."""
    root = Path(lake)
    if not root.is_dir():
        raise UnknownLake(f"no lake at {root}")
    return {f"{log.parent.parent.name}_{log.parent.name}": log.parent
            for log in sorted(root.glob("*/*/_delta_log")) if not log.parent.parent.name.startswith("_")}


# View name -> table, of the tables whose rows add up.
FOLDED = {t.name.replace("/", "_"): t for t in T.ALL if t.fold}

# Delta primitive types of partition columns -> DuckDB types (the paths hold their text).
DUCK_TYPES = {"string": "VARCHAR", "date": "DATE", "boolean": "BOOLEAN", "integer": "INTEGER",
              "long": "BIGINT", "short": "SMALLINT", "byte": "TINYINT", "double": "DOUBLE",
              "float": "FLOAT", "timestamp": "TIMESTAMPTZ", "timestamp_ntz": "TIMESTAMP"}


def register(con: duckdb.DuckDBPyConnection, name: str, path: str | Path) -> None:
    """A view ``name`` over the current version of the Delta table at ``path``; a table whose
    rows add up (``Table.fold``: the profiles) is seen folded, one row per key."""
    folded = FOLDED.get(name)
    if folded is not None:
        _register(con, f"{name}__rows", path)
        con.execute(f"CREATE VIEW {name} AS {fold_sql(folded, f'{name}__rows')}")
        return
    _register(con, name, path)


def _register(con: duckdb.DuckDBPyConnection, name: str, path: str | Path) -> None:
    table = DeltaTable(str(path))
    features = set(table.protocol().reader_features or [])
    files = table.file_uris()
    if not files or features & {"deletionVectors", "columnMapping"}:
        con.register(name, table.to_pyarrow_table())  # delta-rs applies what the files alone lack
        return
    fields = table.schema().fields
    parts = set(table.metadata().partition_columns)
    types = ", ".join(f"'{f.name}': '{DUCK_TYPES.get(getattr(f.type, 'type', ''), 'VARCHAR')}'"
                      for f in fields if f.name in parts)
    columns = ", ".join(f'"{f.name}"' for f in fields)
    con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM read_parquet({files!r}, "
                f"hive_partitioning = {bool(parts)}, union_by_name = true"
                + (f", hive_types = {{{types}}})" if parts else ")"))


def connect(lake: str | Path, names: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per Delta table of the lake (or only ``names``)."""
    con = duckdb.connect()
    for name, path in table_paths(lake).items():
        if names is None or name in names:
            register(con, name, path)
    return con


def mentioned(sql: str, names) -> list[str]:
    """The view names ``sql`` mentions (a superset is harmless: an unused view costs a log read)."""
    text = sql.lower()
    return [name for name in names if name in text]


@dataclass
class Answer:
    """A query's result: column names, DuckDB type names and rows (tuples)."""
    columns: list[str]
    types: list[str]
    rows: list[tuple]

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def query(lake: str | Path, sql: str) -> Answer:
    """Run ``sql`` over the lake's views (only those whose name it mentions are opened)."""
    result = connect(lake, mentioned(sql, table_paths(lake))).sql(sql)
    if result is None:  # a statement that returns nothing
        return Answer([], [], [])
    return Answer(result.columns, [str(t) for t in result.types], result.fetchall())


NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")


def print_table(answer: Answer, console, limit: int = 1000) -> None:
    """An answer as a terminal table (the first ``limit`` rows), with its row count."""
    from rich.table import Table

    out = Table(show_lines=False)
    for name, kind in zip(answer.columns, answer.types, strict=True):
        out.add_column(name, justify="right" if kind.startswith(NUMERIC) else "left")
    for row in answer.rows[:limit]:
        out.add_row(*(_cell(v) for v in row))
    console.print(out)
    more = f" (first {limit} shown)" if len(answer.rows) > limit else ""
    console.print(f"{len(answer.rows):,} rows{more}")


def write_csv(answer: Answer, out) -> None:
    import csv

    writer = csv.writer(out)
    writer.writerow(answer.columns)
    writer.writerows(["" if v is None else v for v in row] for row in answer.rows)


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
