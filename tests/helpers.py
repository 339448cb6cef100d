"""Helpers several test modules share (import as ``from .helpers import ...``)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd

import opengem


def example(model_id: str, **changes: Any) -> dict[str, Any]:
    """A fresh copy of a model's example query, with top-level keys replaced."""
    query = copy.deepcopy(opengem.get_example_query(model_id)["example_query"])
    query.update(changes)
    return query


def assert_frames_equal(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    """Frame by frame; the wide expression matrix compared as one array (pandas'
    column-by-column comparison of 20,000 gene columns takes seconds)."""
    assert set(got) == set(want)
    for name in want:
        if name == "expression":
            a, b = got[name], want[name]
            assert list(a.columns) == list(b.columns)
            pd.testing.assert_index_equal(a.index, b.index)
            assert set(a.dtypes) == set(b.dtypes) == {np.dtype(np.int64)}
            assert np.array_equal(a.to_numpy(), b.to_numpy())
        else:
            pd.testing.assert_frame_equal(got[name], want[name], obj=name)
