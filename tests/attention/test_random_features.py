"""Tests for gaussian_orthogonal_random_matrix: shapes, norms, Haar property."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import gaussian_orthogonal_random_matrix


@pytest.mark.parametrize("m,d", [(16, 8), (20, 8), (5, 8)])
def test_orthogonal_blocks(m, d):
  w = np.asarray(gaussian_orthogonal_random_matrix(
      jax.random.PRNGKey(0), m, d, scaling="sqrt_d"))
  assert w.shape == (m, d) and w.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), math.sqrt(d),
                             rtol=1e-5)
  for start in range(0, m, d):
    block = w[start:start + d] / math.sqrt(d)
    np.testing.assert_allclose(block @ block.T, np.eye(len(block)),
                               atol=1e-5)


def test_chi_norms_match_gaussian_norms():
  d = 8
  draw = jax.vmap(lambda k: gaussian_orthogonal_random_matrix(k, 8, d))
  w = np.asarray(draw(jax.random.split(jax.random.PRNGKey(1), 2000)))
  norms = np.linalg.norm(w, axis=-1).ravel()
  # E[chi_d^2] = d and Var[chi_d^2] = 2d.
  assert abs(np.mean(norms ** 2) - d) < 0.15
  assert abs(np.var(norms ** 2) - 2 * d) < 1.0
  assert np.std(norms) > 0.3  # not constant like sqrt_d


def test_iid_rows_are_not_orthogonal():
  w = np.asarray(gaussian_orthogonal_random_matrix(
      jax.random.PRNGKey(2), 8, 8, orthogonal=False))
  gram = w @ w.T
  assert np.abs(gram - np.diag(np.diag(gram))).max() > 0.5


def test_reproducible_by_key():
  a = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(3), 12, 4)
  b = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(3), 12, 4)
  c = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(4), 12, 4)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def _mean_estimate(blocks_NMD, x, y):
  """Mean positive-feature estimate of exp(x.y) over N projections."""
  wx = blocks_NMD @ x
  wy = blocks_NMD @ y
  phi = lambda wz, z: np.exp(wz - 0.5 * z @ z)
  return np.mean(np.sum(phi(wx, x) * phi(wy, y), axis=-1) /
                 blocks_NMD.shape[1])


def test_haar_estimator_is_unbiased_along_first_axis():
  """x + y along e_1: a QR without the sign(diag R) fix is biased there."""
  d, n = 4, 20000
  keys = jax.random.split(jax.random.PRNGKey(5), n)
  ours = np.asarray(jax.vmap(
      lambda k: gaussian_orthogonal_random_matrix(k, d, d))(keys), np.float64)
  x = np.array([0.6, 0.2, 0.0, 0.0])
  y = np.array([0.6, -0.2, 0.0, 0.0])
  truth = math.exp(x @ y)
  assert abs(_mean_estimate(ours, x, y) / truth - 1) < 0.03

  # The same draw without the sign correction (the official code's QR):
  # the first column of Q has a fixed sign and the estimate is far off.
  def no_sign_fix(key):
    g_key, n_key = jax.random.split(key)
    q, _ = jnp.linalg.qr(jax.random.normal(g_key, (d, d)))
    norms = jnp.linalg.norm(jax.random.normal(n_key, (d, d)), axis=-1)
    return q.T * norms[:, None]
  biased = np.asarray(jax.vmap(no_sign_fix)(keys), np.float64)
  assert abs(_mean_estimate(biased, x, y) / truth - 1) > 0.1


def test_bad_arguments():
  with pytest.raises(ValueError, match="scaling"):
    gaussian_orthogonal_random_matrix(jax.random.PRNGKey(0), 4, 4,
                                      scaling="unit")
  with pytest.raises(ValueError, match="positive"):
    gaussian_orthogonal_random_matrix(jax.random.PRNGKey(0), 0, 4)


def test_matches_sign_corrected_qr():
  """Gram-Schmidt gives the QR whose R has a positive diagonal (Haar)."""
  from performer_jax.attention import random_features
  rng = jax.random.PRNGKey(3)
  q_NDD = random_features.haar_orthogonal(rng, 3, 16)
  gaussian = jax.random.normal(rng, (3, 16, 16), jnp.float32)
  q, r = jnp.linalg.qr(jnp.swapaxes(gaussian, 1, 2))
  q = q * jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))[:, None, :]
  np.testing.assert_allclose(q_NDD, jnp.swapaxes(q, 1, 2), atol=1e-5)
  np.testing.assert_allclose(jnp.einsum("nij,nkj->nik", q_NDD, q_NDD),
                             np.broadcast_to(np.eye(16), (3, 16, 16)),
                             atol=1e-5)
