"""docs/tables.md documents every table and column that pipelines/tables.py declares."""

import re

from pipelines import tables
from pipelines.config import REPO_ROOT


def _documented() -> dict[str, list[str]]:
    text = (REPO_ROOT / "docs" / "tables.md").read_text()
    out: dict[str, list[str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        name, body = section.split("\n", 1)
        out[name.strip()] = re.findall(r"^\| (\w+) \|", body, flags=re.M)
    return {k: [c for c in v if c != "column"] for k, v in out.items()}


def test_every_table_and_column_is_documented():
    documented = _documented()
    for table in tables.ALL:
        assert documented.get(table.name) == table.columns, table.name


def test_every_documented_table_exists():
    assert set(_documented()) == {t.name for t in tables.ALL}
