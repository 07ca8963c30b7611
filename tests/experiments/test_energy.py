"""Attention as energy descent (experiments/energy) at tiny sizes."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.energy import layers
from experiments.energy import run as energy_run
from performer_jax.attention import gaussian_orthogonal_random_matrix

L, D = 12, 4


def _inputs(seed, scale=0.7):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (L, D)),
          scale * jax.random.normal(k2, (D, D)) / np.sqrt(D))


def test_energy_and_attention_match_float64_brute_force():
  y, w = _inputs(0)
  y64, w64 = np.asarray(y, np.float64), np.asarray(w, np.float64)
  z = y64 @ w64.T
  beta = np.exp(-0.5 * ((z[:, None] - z[None]) ** 2).sum(-1))
  x = y64 + 0.1
  e = -beta.sum() + 0.3 / 2 * ((y64 - x) ** 2).sum()
  np.testing.assert_allclose(layers.energy(y, jnp.asarray(x, jnp.float32),
                                           w, 0.3), e, rtol=1e-5)
  attn = beta @ y64 / beta.sum(1, keepdims=True)
  np.testing.assert_allclose(layers.tied_attention(y, w), attn, atol=1e-5)


def test_layer_is_a_preconditioned_gradient_step():
  # The majorizer touches E at Y, so its gradient there is grad E.
  y, w = _inputs(1)
  x, lam, alpha = y + 0.2, 0.5, 0.3
  g = jax.grad(layers.energy)(y, x, w, lam)
  z = np.asarray(y @ w.T, np.float64)
  d = np.exp(-0.5 * ((z[:, None] - z[None]) ** 2).sum(-1)).sum(1)
  c = np.linalg.norm(np.asarray(w.T @ w), 2)
  expect = np.asarray(y) - alpha / (2 * c * d + lam)[:, None] * np.asarray(g)
  np.testing.assert_allclose(layers.exact_layer(y, x, w, lam, alpha), expect,
                             atol=1e-5)


def _unrolled(alpha, seed, lam=0.5, scale=0.7, projections=None):
  y, w = _inputs(seed, scale)
  return np.asarray(layers.unroll(
      lambda v, p: layers.exact_layer(v, y, w, lam, alpha, p), y, y, w, lam,
      24, projections))


def test_exact_layers_never_increase_the_energy():
  for seed, alpha, lam in ((2, 1.0, 0.5), (3, 1.9, 0.0), (4, 0.5, 5.0)):
    e = _unrolled(alpha, seed, lam, scale=1.5)
    assert e[-1] < e[0]
    assert (np.diff(e) <= 1e-5 * np.abs(e[:-1])).all(), (seed, np.diff(e))


def test_a_step_outside_the_range_increases_the_energy():
  e = _unrolled(energy_run.WRONG_STEP, seed=2, scale=1.5)
  assert (np.diff(e) > 1e-3 * np.abs(e[:-1])).any()


def test_favor_violation_shrinks_with_features():
  y, w = _inputs(5, scale=0.5)
  exact = layers.tied_attention(y, w)
  errs = []
  for m in (8, 2048):
    proj = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(m), m, D)
    errs.append(float(jnp.abs(layers.tied_attention(y, w, proj) -
                              exact).max()))
  assert errs[1] < 0.5 * errs[0], errs
  ref = _unrolled(1.0, 6, lam=L, scale=0.5)
  viol = []
  for m in (8, 2048):
    keys = jax.random.split(jax.random.PRNGKey(m), 24)
    projs = jnp.stack([gaussian_orthogonal_random_matrix(k, m, D)
                       for k in keys])
    e = _unrolled(1.0, 6, lam=L, scale=0.5, projections=projs)
    viol.append(energy_run.violation(e[None], ref[None]))
  assert viol[1] < viol[0], viol
