"""Shared helpers (``pipelines/common.py``) on hand-built input."""

import pandas as pd

from pipelines.common import sorted_by


def test_sorted_by_orders_as_sort_values_does():
    df = pd.DataFrame({"k": ["é", "a", None, "Z", "a", "a"], "t": [1, 2, 0, 5, 1, 1],
                       "row": [0, 1, 2, 3, 4, 5]}, index=[10, 11, 12, 13, 14, 15])
    out = sorted_by(df, ["k", "t"])
    # strings in code point order ('Z' < 'a' < 'é'), nulls last, equal keys in input order
    assert out["row"].tolist() == [3, 4, 5, 1, 0, 2]
    assert out.index.tolist() == list(range(6))
