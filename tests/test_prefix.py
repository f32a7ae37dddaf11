"""The fast prefix sums (jaxsched.core.prefix) equal jnp.cumsum bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsched.core.prefix import count_through, prefix_sum


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 128, 256, 300])
def test_count_through_equals_cumsum(n):
    mask = jax.random.bernoulli(jax.random.PRNGKey(n), 0.4, (n,))
    got = count_through(mask)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.cumsum(np.asarray(mask)))


@pytest.mark.parametrize("n", [1, 7, 64, 256, 300])
def test_prefix_sum_equals_cumsum(n):
    x = jax.random.randint(jax.random.PRNGKey(n), (n,), -20000, 20000, jnp.int32)
    got = prefix_sum(x)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.cumsum(x)))


def test_vmapped_count_through():
    mask = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (8, 256))
    np.testing.assert_array_equal(np.asarray(jax.vmap(count_through)(mask)),
                                  np.cumsum(np.asarray(mask), axis=1))


def test_prefix_sum_of_a_mask_counts_it():
    mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (70,))
    got = prefix_sum(mask)
    assert got.dtype == jnp.cumsum(mask).dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.cumsum(mask)))


def test_prefix_sum_of_a_matrix_is_cumsums_flattened_sum():
    x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(prefix_sum(x)), np.cumsum(np.arange(12)))
