"""Shared helpers (``pipelines/common.py``) on hand-built input."""

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.common import distinct_lists, sorted_by


def test_sorted_by_orders_as_sort_values_does():
    df = pd.DataFrame({"k": ["é", "a", None, "Z", "a", "a"], "t": [1, 2, 0, 5, 1, 1],
                       "row": [0, 1, 2, 3, 4, 5]}, index=[10, 11, 12, 13, 14, 15])
    out = sorted_by(df, ["k", "t"])
    # strings in code point order ('Z' < 'a' < 'é'), nulls last, equal keys in input order
    assert out["row"].tolist() == [3, 4, 5, 1, 0, 2]
    assert out.index.tolist() == list(range(6))


def test_distinct_lists_of_arrow_or_python_strings():
    owner = np.array([0, 0, 0, 0, 2, 2, 2])
    values = ["é", "a", None, "a", "a\x00", "Z", "a"]
    want = [["a", "é"], [], ["Z", "a", "a\x00"]]  # code point order; a NUL makes another value
    assert distinct_lists(owner, np.array(values, dtype=object), 3).to_pylist() == want
    chunked = pa.chunked_array([pa.array(values[:3]), pa.array(values[3:])])
    assert distinct_lists(owner, chunked, 3).to_pylist() == want
    assert distinct_lists(np.zeros(0, np.int64), pa.array([], pa.string()), 2).to_pylist() == [[], []]
