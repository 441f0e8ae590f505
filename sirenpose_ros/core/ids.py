"""Looking track ids up in a sorted id array (ROS-free): the one way every stage matches the
tracks of a frame against per-track state it keeps."""
from __future__ import annotations

import numpy as np


def lookup(sorted_ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, present), each shaped like ``query``: where each query id sits in the ascending
    ``sorted_ids``, and whether it is there (index 0 where it is not)."""
    query = np.asarray(query)
    if sorted_ids.size == 0 or query.size == 0:
        return np.zeros(query.shape, np.int64), np.zeros(query.shape, bool)
    k = np.clip(np.searchsorted(sorted_ids, query), 0, sorted_ids.size - 1)
    return k, sorted_ids[k] == query
