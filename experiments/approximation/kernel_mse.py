"""Kernel-level MSE of softmax-kernel random features: Monte Carlo and Lemma 2.

For a pair (x, y) the softmax kernel is SM(x, y) = exp(x . y). With m random
vectors w_1..w_m (rows of a projection) and the paper's normalization the
estimators are, with u = x + y and z = x - y:

  positive:   exp(-(|x|^2 + |y|^2) / 2) * mean_i exp(w_i . u)
  trig:       exp(+(|x|^2 + |y|^2) / 2) * mean_i cos(w_i . z)
  hyperbolic: exp(-(|x|^2 + |y|^2) / 2) * mean_i cosh(w_i . u)

i.e. phi(x) . phi(y) for phi(x) = exp(-|x|^2/2) / sqrt(m) exp(W x) (positive),
exp(|x|^2/2) / sqrt(m) [sin, cos](W x) (trig, since sin a sin b + cos a cos b
= cos(a - b)) and exp(-|x|^2/2) / sqrt(2m) [exp(W x), exp(-W x)] (hyperbolic).
The library's feature maps drop these constants (they cancel in attention),
so the estimates are formed here, in float64, from the projections that
`performer_jax.attention.gaussian_orthogonal_random_matrix` draws.

Lemma 2 (Choromanski et al. 2021) gives their MSE for iid Gaussian w:
  MSE_trig = 1/(2m) exp(|u|^2) SM^-2 (1 - exp(-|z|^2))^2
  MSE_pos  = 1/m exp(|u|^2) SM^2 (1 - exp(-|u|^2))
  MSE_hyp  = 1/2 (1 - exp(-|u|^2)) MSE_pos
"""

from __future__ import annotations

import jax
import numpy as np

from performer_jax import attention

KINDS = ("positive", "trig", "hyperbolic")


def lemma2_mse(x: np.ndarray, y: np.ndarray, m: int, kind: str) -> float:
  """Lemma 2's MSE of the m-sample estimator of exp(x . y), iid features."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  sm = np.exp(x @ y)
  u2, z2 = np.sum((x + y) ** 2), np.sum((x - y) ** 2)
  pos = np.exp(u2) * sm ** 2 * (1.0 - np.exp(-u2)) / m
  if kind == "positive":
    return float(pos)
  if kind == "hyperbolic":
    return float(0.5 * (1.0 - np.exp(-u2)) * pos)
  if kind == "trig":
    return float(np.exp(u2) / sm ** 2 * (1.0 - np.exp(-z2)) ** 2 / (2 * m))
  raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}.")


def draw_projections(seed: int, draws: int, m: int, d: int, *,
                     orthogonal: bool, scaling: str = "chi") -> np.ndarray:
  """`[draws, m, d]` float64 projections from the library's sampler."""
  keys = jax.random.split(jax.random.PRNGKey(seed), draws)
  sample = jax.vmap(lambda k: attention.gaussian_orthogonal_random_matrix(
      k, m, d, orthogonal=orthogonal, scaling=scaling))
  return np.asarray(sample(keys), np.float64)


def estimates(x: np.ndarray, y: np.ndarray, w_NMD: np.ndarray,
              kind: str) -> np.ndarray:
  """`[draws]` estimates phi(x) . phi(y) of exp(x . y), one per projection."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  half = 0.5 * (x @ x + y @ y)
  if kind == "positive":
    return np.exp(-half) * np.mean(np.exp(w_NMD @ (x + y)), axis=-1)
  if kind == "hyperbolic":
    return np.exp(-half) * np.mean(np.cosh(w_NMD @ (x + y)), axis=-1)
  if kind == "trig":
    return np.exp(half) * np.mean(np.cos(w_NMD @ (x - y)), axis=-1)
  raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}.")


def mc_mse(x: np.ndarray, y: np.ndarray, w_NMD: np.ndarray,
           kind: str) -> tuple[float, float]:
  """Monte Carlo MSE over the draws and its standard error."""
  err2 = (estimates(x, y, w_NMD, kind) - np.exp(
      np.asarray(x, np.float64) @ np.asarray(y, np.float64))) ** 2
  return float(err2.mean()), float(err2.std(ddof=1) / np.sqrt(err2.size))


def pair_at_angle(d: int, norm: float, angle: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """x, y in R^d with |x| = |y| = norm and angle(x, y) = angle (radians)."""
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(rng.standard_normal((d, 2)))
  e1, e2 = basis[:, 0], basis[:, 1]
  return norm * e1, norm * (np.cos(angle) * e1 + np.sin(angle) * e2)
