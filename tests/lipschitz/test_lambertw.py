"""Tests for performer_jax.lipschitz.lambertw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from performer_jax.lipschitz import lambertw


def _grid(dtype):
  lo, hi = (-300, 300) if dtype == np.float64 else (-37, 38)
  return np.concatenate([
      np.linspace(-0.35, 0.0, 41),
      np.logspace(lo, hi, 301),
      -np.logspace(lo, -1, 41),
  ]).astype(dtype)


def test_known_values():
  w = np.asarray(lambertw.lambertw0(jnp.array([0.0, 1.0, np.e, 2 * np.e ** 2,
                                               -np.exp(-1.0)])))
  # W(1) is the omega constant; W(e) = 1; W(2 e^2) = 2; W(-1/e) = -1.
  np.testing.assert_allclose(w, [0.0, 0.5671432904, 1.0, 2.0, -1.0],
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_scipy_and_inverts(dtype):
  x = _grid(dtype)
  with jax.enable_x64(dtype == np.float64):
    w = np.asarray(lambertw.lambertw0(jnp.asarray(x)))
  assert w.dtype == dtype
  ref = scipy.special.lambertw(x.astype(np.float64)).real
  # float32: 8 ulps (the Halley iteration ends within a few ulps; exp and
  # log may differ by an ulp between CPUs).
  rtol = 1e-12 if dtype == np.float64 else 1e-6
  np.testing.assert_allclose(w, ref, rtol=rtol, atol=1e-300)
  # The defining identity, away from overflow of exp.
  ok = x < 1e30
  wd = w[ok].astype(np.float64)
  np.testing.assert_allclose(wd * np.exp(wd), x[ok], rtol=10 * rtol,
                             atol=1e-300)


def test_near_branch_point_and_domain():
  x = -np.exp(-1.0) + np.logspace(-12, -2, 11)
  with jax.enable_x64(True):
    w = np.asarray(lambertw.lambertw0(jnp.asarray(x)))
  np.testing.assert_allclose(w, scipy.special.lambertw(x).real, rtol=1e-7)
  w_bad = lambertw.lambertw0(jnp.array([-0.5, jnp.inf, jnp.nan]))
  assert np.isnan(w_bad[0]) and np.isposinf(w_bad[1]) and np.isnan(w_bad[2])


def test_vectorized_and_differentiable():
  x = jnp.linspace(0.1, 50.0, 12).reshape(3, 4)
  w = lambertw.lambertw0(x)
  assert w.shape == (3, 4)
  # dW/dx = W / (x (1 + W)).
  grad = jax.vmap(jax.grad(lambertw.lambertw0))(x.ravel()).reshape(3, 4)
  np.testing.assert_allclose(grad, w / (x * (1 + w)), rtol=1e-4)


def test_phi_inverse():
  n = np.array([3, 10, 30, 1000])
  phi_inv = np.asarray(lambertw.phi_inverse(n - 1))
  # phi(x) = x exp(x + 1) must give back N - 1.
  np.testing.assert_allclose(phi_inv * np.exp(phi_inv + 1), n - 1, rtol=1e-5)
