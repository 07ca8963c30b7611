"""The energy and the constrained Transformer layer of Yang, Huang and Wipf.

Yang, Huang and Wipf (2022), "Transformers from an Optimization
Perspective", as in the authors' code (energy_curve/model.py): tokens Y
`[L, D]` (rows), an attention metric W `[D, D]` with S = W W^T, an FFN
matrix W_f `[D, D]` (symmetric, eigenvalues clipped to [-0.95, 0.95]) and a
bias B `[D]`:

  E_att(Y) = sum_{i>j} -exp(-|(y_i - y_j) W|^2 / 2) + |Y|^2 / 2,
  E_ffn(Y) = tr(Y W_f Y^T) / 2 + |Y - B|^2 / 2,      E = E_att + E_ffn.

Layer = attention step then FFN step (alpha = 1 in the paper's code):

  attention:  Y <- (1 - a) Y + a softmax(Y S Y^T) Y   (tied query-key S,
              identity value map, no key bias),
  FFN:        Y <- Y - a grad E_ffn = Y ((1 - a) I - a W_f) + a B.

(The authors' code measures E_att with Y W but attends with W^T W; the two
agree for symmetric W. Here both use S = W W^T.)

What is guaranteed (our derivation). FFN: E_ffn is quadratic with Hessian
eigenvalues 1 + eig(W_f) in [0.05, 1.95], so a gradient step with
0 < a < 2 / 1.95 never increases E_ffn. Attention: rho(z) = -exp(-z) is
concave, so Q(Y) = sum_{i>j} beta_ij |(y_i - y_j) W|^2 / 2 + |Y|^2 / 2 +
const, beta_ij = exp(-|(y_i - y_j) W|^2 / 2) at the current Y, majorizes
E_att and touches it there; any step that lowers Q lowers E_att. The step
with a = 1 is Y <- P Y, P = softmax(Y S Y^T). If every token has the same
S-norm y_j S y_j^T, P = D^-1 beta (a random walk on a positive
semi-definite kernel, eigenvalues in [0, 1]) and the pairwise term of Q
cannot increase; |PY| <= |Y| needs in addition |P|_2 <= 1 (e.g. equal
degrees D_i). Neither condition holds exactly for free inputs, so the
attention step descends on E_att only approximately (always at small
|W|, where P is near uniform), and an FFN step can raise E_att (and an
attention step E_ffn): the sum E is not guaranteed to fall per layer.
Once the tokens have merged, E_att = -L(L-1)/2 + L |y|^2 / 2 while the FFN
steps drive y to B (I + W_f)^-1, whose norm grows without bound as an
eigenvalue of W_f nears -1; a positive semi-definite W_f keeps it near B.
FAVOR+ replaces softmax(Y S Y^T) Y by `favor_attention` (positive random
features estimate numerator and normalizer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import favor_attention
from performer_jax.attention import softmax_attention

FFN_CLIP = 0.95  # |eigenvalues of W_f| <= this, as in the authors' code.


def constrain_ffn(w_f: jax.Array, psd: bool = False) -> jax.Array:
  """Symmetrised W_f with eigenvalues clipped to [-FFN_CLIP, FFN_CLIP], or
  to [0, FFN_CLIP] with `psd` (the authors' normalize_weight clips
  W_f W_f^T, which is positive semi-definite)."""
  lam, u = jnp.linalg.eigh((w_f + w_f.T) / 2)
  return (u * jnp.clip(lam, 0.0 if psd else -FFN_CLIP, FFN_CLIP)) @ u.T


def attention_energy(y_LD: jax.Array, w: jax.Array) -> jax.Array:
  z = y_LD @ w
  sq = jnp.sum(z ** 2, -1)
  half_d = jnp.maximum(0.5 * (sq[:, None] + sq[None, :]) - z @ z.T, 0.0)
  below = jnp.tril(jnp.ones_like(half_d), -1)  # pairs i > j
  return -jnp.sum(below * jnp.exp(-half_d)) + 0.5 * jnp.sum(y_LD ** 2)


def ffn_energy(y_LD: jax.Array, w_f: jax.Array, b_D: jax.Array) -> jax.Array:
  return 0.5 * jnp.sum((y_LD @ w_f) * y_LD) + 0.5 * jnp.sum((y_LD - b_D) ** 2)


def energy(y_LD, params) -> jax.Array:
  """E(Y) = E_att + E_ffn, float32 scalar; params: w, w_f, b."""
  return (attention_energy(y_LD, params["w"]) +
          ffn_energy(y_LD, params["w_f"], params["b"]))


def attention_step(y_LD, w, alpha: float = 1.0, projection=None):
  """(1 - a) Y + a softmax(Y W W^T Y^T) Y; FAVOR+ when `projection`
  `[m, D]` is given."""
  z = y_LD @ w
  scale = z.shape[-1] ** 0.25  # Undoes the library's 1/sqrt(head_dim).
  q = scale * z[:, None]
  v = y_LD[:, None]
  if projection is None:
    out = softmax_attention(q, q, v)[:, 0]
  else:
    out = favor_attention(q, q, v, projection)[:, 0]
  return (1 - alpha) * y_LD + alpha * out


def ffn_step(y_LD, w_f, b_D, alpha: float = 1.0):
  """Y - a grad E_ffn(Y) (w_f symmetric)."""
  eye = jnp.eye(w_f.shape[0], dtype=y_LD.dtype)
  return y_LD @ ((1 - alpha) * eye - alpha * w_f) + alpha * b_D


def exact_layer(y_LD, params, alpha=(1.0, 1.0), projection=None):
  """(Y after the attention step, Y after the FFN step)."""
  y_att = attention_step(y_LD, params["w"], alpha[0], projection)
  return y_att, ffn_step(y_att, params["w_f"], params["b"], alpha[1])


def unconstrained_layer(y_LD, free):
  """Standard attention with free W_Q, W_K, W_V and a free FFN matrix F:
  Y <- softmax(Y W_Q W_K^T Y^T) Y W_V, then Y <- Y F + B.
  (Returns the same pair as `exact_layer`.)"""
  d = free["w_q"].shape[1] ** 0.25
  y_att = softmax_attention(d * (y_LD @ free["w_q"])[:, None],
                            d * (y_LD @ free["w_k"])[:, None],
                            (y_LD @ free["w_v"])[:, None])[:, 0]
  return y_att, y_att @ free["f"] + free["b"]


def unroll(layer, y_LD, params, num_layers: int, per_layer=None) -> dict:
  """Energies along `num_layers` layers `layer(y, per_layer[t]) -> (y_att,
  y_out)`: dict of `[num_layers + 1]` arrays E, E_att, E_ffn after each
  layer, and `[num_layers]` arrays att_rise (E_att after the attention step
  minus before) and ffn_rise (E_ffn after the FFN step minus before)."""
  def parts(y):
    return (attention_energy(y, params["w"]),
            ffn_energy(y, params["w_f"], params["b"]))

  def body(y, arg):
    y_att, y_out = layer(y, arg)
    a0, _ = parts(y)
    a1, f1 = parts(y_att)
    a2, f2 = parts(y_out)
    return y_out, {"E": a2 + f2, "E_att": a2, "E_ffn": f2,
                   "att_rise": a1 - a0, "ffn_rise": f2 - f1}

  _, out = jax.lax.scan(body, y_LD, per_layer, length=num_layers)
  a, f = parts(y_LD)
  for name, first in (("E", a + f), ("E_att", a), ("E_ffn", f)):
    out[name] = jnp.concatenate([first[None], out[name]])
  return out
