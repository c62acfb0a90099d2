"""SQL over the lake without a JVM: DuckDB over the Delta tables, read through delta-rs.

Every Delta table under the lake root is a view named after its path, ``/`` -> ``_``:
``gold/session_funnel`` is ``gold_session_funnel``, ``ops/notifications`` is
``ops_notifications``. A view is a delta-rs snapshot of the table's current version, handed
to DuckDB as a pyarrow dataset: DuckDB reads only the columns and row groups a query needs,
and pushes its filters into the scan. No Spark session, so a query answers in well under a
second where ``spark.read`` needs about 15 s before its first row (docs/observability.md).

Used by ``funnelhouse sql``, the terminal report and the dashboard.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable


class UnknownLake(ValueError):
    pass


def table_paths(lake: str | Path) -> dict[str, Path]:
    """View name -> folder of every Delta table under ``lake`` (two levels: layer/name)."""
    root = Path(lake)
    if not root.is_dir():
        raise UnknownLake(f"no lake at {root}")
    return {f"{log.parent.parent.name}_{log.parent.name}": log.parent
            for log in sorted(root.glob("*/*/_delta_log")) if not log.parent.parent.name.startswith("_")}


def dataset(path: str | Path):
    """The table's current snapshot as a lazy pyarrow dataset (nothing read yet)."""
    return DeltaTable(str(path)).to_pyarrow_dataset()


def connect(lake: str | Path, names: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per Delta table of the lake (or only ``names``)."""
    paths = table_paths(lake)
    con = duckdb.connect()
    for name, path in paths.items():
        if names is None or name in names:
            con.register(name, dataset(path))
    return con


def query(lake: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` over the lake's views (only those whose name it mentions are opened);
    the answer as Arrow."""
    mentioned = [name for name in table_paths(lake) if name in sql.lower()]
    return connect(lake, mentioned).sql(sql).to_arrow_table()


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    """Run ``sql`` on ``con``; rows as dicts."""
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def print_table(answer: pa.Table, console, limit: int = 1000) -> None:
    """An answer as a terminal table (the first ``limit`` rows), with its row count."""
    from rich.table import Table

    out = Table(show_lines=False)
    for field in answer.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        out.add_column(field.name, justify="right" if numeric else "left")
    for row in answer.slice(0, limit).to_pylist():
        out.add_row(*(_cell(v) for v in row.values()))
    console.print(out)
    more = f" (first {limit} shown)" if answer.num_rows > limit else ""
    console.print(f"{answer.num_rows:,} rows{more}")


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
