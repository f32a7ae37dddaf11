"""LIFO eviction's two-level search (jaxsched.policies.base.evict_newest_first) equals the
one-level rule: evict resident i iff the memory after it, sum(m) - cumsum(m), is short of the
excess."""

import jax
import numpy as np
from hypothesis import given, settings, strategies as st

from jaxsched.policies.base import evict_newest_first

_evict = jax.jit(evict_newest_first)


def _one_level(need, valid, excess):
    need = np.where(valid, need, 0)
    return valid & (need.sum() - np.cumsum(need) < excess)


@st.composite
def _cases(draw):
    b = draw(st.sampled_from([1, 2, 3, 31, 32, 33, 64, 100, 256]))
    need = np.array(draw(st.lists(st.integers(0, 300), min_size=b, max_size=b)), np.int32)
    valid = np.array(draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    total = int(np.where(valid, need, 0).sum())
    excess = draw(st.one_of(st.integers(-3, total + 3), st.sampled_from([0.5, total - 0.5])))
    return need, valid, np.float32(excess)


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_two_level_search_equals_the_one_level_rule(case):
    need, valid, excess = case
    np.testing.assert_array_equal(np.asarray(_evict(need, valid, excess)),
                                  _one_level(need, valid, excess))


def test_a_golden_lifo_eviction():
    # residents at slots 0, 1, 3 (slot 2 free) needing 5, 4, 6: an excess of 7 frees the
    # newest (6) and then the next (4): 6 < 7, 6 + 4 >= 7.
    need = np.array([5, 4, 9, 6], np.int32)
    valid = np.array([True, True, False, True])
    got = np.asarray(_evict(need, valid, np.float32(7)))
    np.testing.assert_array_equal(got, [False, True, False, True])
    assert not np.asarray(_evict(need, valid, np.float32(0))).any()
    np.testing.assert_array_equal(np.asarray(_evict(need, valid, np.float32(99))), valid)
