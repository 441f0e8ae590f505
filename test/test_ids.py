"""core/ids.py: the sorted-id lookup every stage uses."""
import numpy as np

from sirenpose_ros.core.ids import lookup


def test_lookup_finds_present_ids_and_flags_absent_ones():
    k, hit = lookup(np.array([2, 5, 9]), np.array([9, 3, 2, 11, -1]))
    assert hit.tolist() == [True, False, True, False, False]
    assert k[hit].tolist() == [2, 0]


def test_lookup_keeps_the_query_shape_and_handles_empty_arrays():
    k, hit = lookup(np.array([1, 4]), np.array([[1, 4], [4, 7]]))      # edges: id pairs
    assert k.shape == hit.shape == (2, 2) and hit.tolist() == [[True, True], [True, False]]
    k, hit = lookup(np.zeros(0, np.int64), np.array([[3, 4]]))
    assert k.shape == (1, 2) and not hit.any()
    k, hit = lookup(np.array([1]), np.zeros(0, np.int64))
    assert k.shape == hit.shape == (0,)
