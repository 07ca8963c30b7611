"""An energy whose majorize-minimize steps are self-attention layers.

Yang, Huang and Wipf (2022), "Transformers from an Optimization
Perspective". For tokens Y `[L, D]`, inputs X, a metric W `[D', D]` and
lam >= 0,

  E(Y) = sum_{i,j} rho(|W (y_i - y_j)|^2 / 2) + lam/2 |Y - X|^2,
  rho(z) = -exp(-z)  (concave, increasing).

Concavity gives the majorizer rho(z) <= rho(z0) + exp(-z0) (z - z0), a
quadratic in Y with weights beta_ij = exp(-|W(y_i - y_j)|^2 / 2), equal at
the current Y. A preconditioned gradient step on it is

  attn_i = sum_j beta_ij y_j / D_i,   D_i = sum_j beta_ij
         = softmax_j((W y_i).(W y_j) - |W y_j|^2 / 2) applied to values y_j,
  y_i <- y_i - alpha / (2 c D_i + lam) [2 D_i S (y_i - attn_i)
                                         + lam (y_i - x_i)],

S = W^T W, c = |S|_2: softmax attention with tied query and key maps (the
paper's symmetry constraint), a key bias -|W y_j|^2 / 2 (constant when token
norms are equalized, as after LayerNorm), value/output map S and a residual
step. Since beta is a Gaussian kernel (positive semi-definite), the
majorizer's preconditioned Hessian has eigenvalues in [0, 1]: every step
with 0 < alpha < 2 cannot increase E. Unconstrained attention (independent
W_Q, W_K, W_V, no key bias) has no such guarantee, nor has FAVOR+, whose
weights beta are random estimates (no longer symmetric); `tied_attention`
estimates the Gaussian kernel itself with positive random features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import favor_attention
from performer_jax.attention import softmax_attention


def energy(y_LD: jax.Array, x_LD: jax.Array, w: jax.Array,
           lam: float) -> jax.Array:
  """E(Y), float32 scalar."""
  return -jnp.sum(jnp.exp(-_half_sq_dist(y_LD @ w.T))) + lam / 2 * jnp.sum(
      (y_LD - x_LD) ** 2)


def _half_sq_dist(z_LE):
  sq = jnp.sum(z_LE ** 2, -1)
  return jnp.maximum(0.5 * (sq[:, None] + sq[None, :]) - z_LE @ z_LE.T, 0.0)


def _augmented(z_LE):
  """q', k' with q'.k' = q.k - |k|^2 / 2, scaled by head_dim^(1/4) to undo
  softmax_attention's 1/sqrt(head_dim)."""
  ones = jnp.ones_like(z_LE[:, :1])
  q = jnp.concatenate([z_LE, ones], -1)
  k = jnp.concatenate([z_LE, -0.5 * jnp.sum(z_LE ** 2, -1, keepdims=True)],
                      -1)
  scale = q.shape[-1] ** 0.25
  return scale * q[:, None], scale * k[:, None]


def gaussian_positive(x, projection_MD):
  """Positive random features of the Gaussian kernel exp(-|q - k|^2 / 2):
  E[phi(q) phi(k)] with phi(x) = exp(w.x - |x|^2), w ~ N(0, I). A constant
  shift keeps exp finite and cancels in the normalization."""
  logits = x @ projection_MD.T - jnp.sum(x * x, -1, keepdims=True)
  return jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits)))


def tied_attention(y_LD, w, projection=None):
  """attn `[L, D]`: sum_j beta_ij y_j / D_i, exact (`softmax_attention` on
  augmented queries and keys) or FAVOR+ (`favor_attention` with Gaussian
  positive features, `projection` `[m, D']`)."""
  z = y_LD @ w.T
  v = y_LD[:, None]
  if projection is None:
    q, k = _augmented(z)
    return softmax_attention(q, k, v)[:, 0]
  x = z.shape[-1] ** 0.25 * z[:, None]  # Undoes the library's d^(-1/4).
  return favor_attention(x, x, v, projection, kernel=gaussian_positive)[:, 0]


def exact_layer(y_LD, x_LD, w, lam: float, alpha: float, projection=None):
  """One majorize-minimize step; FAVOR+ estimates attn when `projection`
  is given (D_i, a step size only, stays exact)."""
  z = y_LD @ w.T
  s = w.T @ w
  c = jnp.linalg.norm(s, 2)
  d_L = jnp.sum(jnp.exp(-_half_sq_dist(z)), -1)
  attn = tied_attention(y_LD, w, projection)
  grad = 2 * d_L[:, None] * ((y_LD - attn) @ s) + lam * (y_LD - x_LD)
  return y_LD - alpha / (2 * c * d_L + lam)[:, None] * grad


def unconstrained_layer(y_LD, w_q, w_k, w_v, alpha: float):
  """Standard residual self-attention: y <- (1 - alpha) y + alpha
  softmax((W_Q y_i).(W_K y_j)) W_V y_j."""
  dq = w_q.shape[0] ** 0.25
  out = softmax_attention(dq * (y_LD @ w_q.T)[:, None],
                          dq * (y_LD @ w_k.T)[:, None],
                          (y_LD @ w_v.T)[:, None])[:, 0]
  return (1 - alpha) * y_LD + alpha * out


def unroll(layer, y_LD, x_LD, w, lam, num_layers: int,
           per_layer=None) -> jax.Array:
  """E after 0..num_layers steps `y <- layer(y, per_layer[t])`: `[layers+1]`.

  `per_layer`: a pytree with a leading `[num_layers]` axis (FAVOR+ draws a
  fresh projection per layer), or None.
  """
  def body(y, arg):
    y = layer(y, arg)
    return y, energy(y, x_LD, w, lam)
  _, es = jax.lax.scan(body, y_LD, per_layer, length=num_layers)
  return jnp.concatenate([energy(y_LD, x_LD, w, lam)[None], es])
