"""The NNX tests' comparison of float32 results."""

import jax
import numpy as np


def assert_close(actual, expected, tol=2e-5):
  """Within tol of the largest finite |entry| of expected: float32 math in
  another order than the float64 (or other float32) reference. Infinities
  (FAVOR+'s initial running max) must match exactly."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  finite = np.isfinite(expected)
  np.testing.assert_array_equal(actual[~finite], expected[~finite])
  scale = max(float(np.abs(expected[finite]).max(initial=0.0)), 1e-6)
  np.testing.assert_allclose(actual[finite] / scale, expected[finite] / scale,
                             atol=tol, rtol=0)


def assert_trees_close(actual, expected, tol=2e-5):
  """`assert_close` leaf by leaf; the trees must have the same structure."""
  assert (jax.tree.structure(actual) == jax.tree.structure(expected)), (
      jax.tree.structure(actual), jax.tree.structure(expected))
  jax.tree.map(lambda a, b: assert_close(a, b, tol), actual, expected)
