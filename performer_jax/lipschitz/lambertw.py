"""Principal branch W_0 of the Lambert W function, in JAX.

W_0(x) is the solution w >= -1 of w * exp(w) = x, defined for x >= -1/e. The
Lipschitz bounds of L2 attention need it through phi^-1(N - 1) = W_0((N-1)/e).

The implementation starts from a branch-aware initial guess and refines it with
a fixed number of Halley iterations, so it is jit/vmap/grad friendly and has no
data-dependent control flow. Halley converges cubically: from the initial
guesses below, 4 iterations reach float64 round-off on the whole domain that
was tested (1e-300 .. 1e300 and the branch point), 6 are used for margin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NUM_HALLEY_STEPS = 6


def _initial_guess(x):
  """A guess within a few percent of W_0(x) on the whole domain."""
  e = jnp.asarray(jnp.e, x.dtype)
  # Near the branch point x = -1/e: series in p = sqrt(2 (e x + 1)).
  p = jnp.sqrt(jnp.maximum(2.0 * (e * x + 1.0), 0.0))
  branch = -1.0 + p - p * p / 3.0 + (11.0 / 72.0) * p * p * p
  # Winitzki's approximation: good from ~-0.3 to ~1e3 and exact at 0.
  lx = jnp.log1p(jnp.maximum(x, -0.3))
  winitzki = lx * (1.0 - jnp.log1p(lx) / (2.0 + lx))
  # Asymptotic expansion for large x: log x - log log x + loglog/log.
  safe_big = jnp.maximum(x, 3.0)
  l1 = jnp.log(safe_big)
  l2 = jnp.log(l1)
  asymptotic = l1 - l2 + l2 / l1
  guess = jnp.where(x < -0.3, branch, winitzki)
  return jnp.where(x > 1e3, asymptotic, guess)


def _halley_step(w, x):
  """One Halley step for f(w) = w e^w - x, written to avoid 0/0."""
  ew = jnp.exp(w)
  f = w * ew - x
  wp1 = w + 1.0
  # f' = e^w (w + 1), f'' = e^w (w + 2); Halley:
  #   w <- w - f / (f' - f'' f / (2 f')).
  denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1)
  # At the branch point f' -> 0; there w = -1 is already the answer.
  safe = jnp.abs(denom) > 0
  step = jnp.where(safe, f / jnp.where(safe, denom, 1.0), 0.0)
  return w - step


@jax.jit
def lambertw0(x: jax.Array) -> jax.Array:
  """Principal branch of the Lambert W function, elementwise.

  Args:
    x: float array of any shape (float32 or float64; integers are promoted to
      the default float dtype). The domain is x >= -1/e.

  Returns:
    W_0(x), same shape and dtype as `x` (after promotion). Entries below -1/e
    (outside the domain) are NaN, following scipy.special.lambertw's real
    part convention; +inf maps to +inf.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  minus_inv_e = -jnp.exp(jnp.asarray(-1.0, x.dtype))
  # Clamp values that round-off put a hair below the branch point.
  tol = 4 * jnp.finfo(x.dtype).eps
  xc = jnp.where((x < minus_inv_e) & (x >= minus_inv_e - tol), minus_inv_e, x)
  xc_safe = jnp.where(jnp.isfinite(xc) & (xc >= minus_inv_e), xc, 0.0)
  w = _initial_guess(xc_safe)
  w = jax.lax.fori_loop(0, _NUM_HALLEY_STEPS,
                        lambda _, w: _halley_step(w, xc_safe), w)
  w = jnp.where(xc == minus_inv_e, -1.0, w)
  w = jnp.where(xc < minus_inv_e, jnp.nan, w)
  w = jnp.where(jnp.isposinf(xc), jnp.inf, w)
  return jnp.where(jnp.isnan(xc), jnp.nan, w)


def phi_inverse(n_minus_1):
  """phi^-1(N - 1) = W_0((N - 1) / e) from Theorem 3.2 of Kim et al. (2021).

  phi(x) = x exp(x + 1) is the function whose inverse bounds the weighted
  variance term of the L2 attention Jacobian.

  Args:
    n_minus_1: N - 1 (number of tokens minus one), scalar or array.

  Returns:
    W_0((N - 1) / e) as a float array.
  """
  n_minus_1 = jnp.asarray(n_minus_1)
  if not jnp.issubdtype(n_minus_1.dtype, jnp.floating):
    n_minus_1 = n_minus_1.astype(jnp.result_type(float))
  return lambertw0(n_minus_1 / jnp.e)
