"""Small shared types."""

from collections.abc import Callable

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
