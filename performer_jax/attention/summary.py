"""Segment summaries of keys and the associative operator that joins them.

A segment (a chunk, or one device's keys) is `(m, S)`: m float32 `[X...]`,
the max log-amplitude of its unpadded keys (`-inf` if none; None without
amplitudes); S float32 `[X..., F, E]`, relative to `finite_or_zero(m)`:
`sum_j exp(a_j - m) phi~(k_j) [v_j, 1]^T`; any m >= the max is valid. Join:
  `(m_a, S_a) + (m_b, S_b) = (m, S_a exp(m_a - m) + S_b exp(m_b - m))`,
  `m = max(m_a, m_b)`: associative, identity `(-inf, 0)`, exponents <= 0.
The maxima cancel, so carry no gradient; a prefix transposes to a suffix
over the same operator on `(-m, dS)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked


def _weight(m_part: jax.Array, m_whole: jax.Array) -> jax.Array:
  """`exp(m_part - m_whole)` as a `[X..., 1, 1]` factor: <= 1 when
  `m_part <= m_whole`, and 0 for an empty part (`m_part = -inf`)."""
  m_whole = chunked.finite_or_zero(m_whole)
  return jnp.exp(jnp.minimum(m_part - m_whole, 0.0))[..., None, None]


def combine(a: tuple, b: tuple) -> tuple:
  """`a + b` for summaries `(m, S)` (m None: plain sums). Elementwise over
  any leading axes, as `jax.lax.associative_scan` needs."""
  (m_a, s_a), (m_b, s_b) = a, b
  if m_a is None:
    return None, s_a + s_b
  m = jnp.maximum(m_a, m_b)
  return m, s_a * _weight(m_a, m) + s_b * _weight(m_b, m)


def exclusive_prefix(m_XN: jax.Array | None, s_XNFE: jax.Array,
                     seed: tuple, axis: int) -> tuple:
  """`seed + T_0 + ... + T_{n-1}` for every n, from N summaries along axis
  `axis` of `m_XN` (and of `s_XNFE`).

  Args:
    m_XN, s_XNFE: the summaries `(m_n, T_n)`; m None without amplitudes.
    seed: `(m0 [X...], S0 [X..., F, E])`, the summary of everything before
      the first segment (`(-inf, 0)` for none; m0 None without amplitudes).
    axis: the segment axis N (the same index in m and s).

  Returns:
    `(m_in [X..., N], P [X..., N, F, E])`: P_n relative to m_in_n.
  """
  m0, s0 = seed
  if m0 is not None:
    # An empty summary (m = -inf) is ignored, the seed as any other.
    s0 = jnp.where(jnp.isfinite(m0)[..., None, None], s0, 0.0)
  take = lambda x: jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)
  s_elems = jnp.concatenate([jnp.expand_dims(s0, axis), take(s_XNFE)],
                            axis=axis)
  if m_XN is None:
    return None, jnp.cumsum(s_elems, axis=axis)
  m_elems = jnp.concatenate([jnp.expand_dims(m0, axis), take(m_XN)],
                            axis=axis)
  m_elems = jax.lax.stop_gradient(m_elems)
  return jax.lax.associative_scan(combine, (m_elems, s_elems), axis=axis)


def exclusive_prefix_transpose(m_in_XN: jax.Array | None,
                               m_out_XN: jax.Array | None, m0_X, dp_XNFE,
                               axis: int) -> tuple[jax.Array, jax.Array]:
  """The backward pass of `exclusive_prefix`: `(dT [X..., N, F, E], dS0)`.

  `P_n = sum_{k<n} T_k exp(m_out_k - m_in_n) + S0 exp(m0 - m_in_n)`, so
  `dT_k = sum_{n>k} dP_n exp(m_out_k - m_in_n)`: a reverse prefix of
  `(-m_in_n, dP_n)`, whose running scale is the smallest m_in_n of the
  suffix (for k, that is m_in_{k+1} = m_out_k: the last factor is 1).

  Args:
    m_in_XN: m_in of every segment (as `exclusive_prefix` returns it).
    m_out_XN: the m of every segment's summary T_n.
    m0_X: the seed's m.
    dp_XNFE: the cotangent of P.
    axis: the segment axis.
  """
  n = dp_XNFE.shape[axis]
  if m_in_XN is None:
    suffix = jnp.flip(jnp.cumsum(jnp.flip(dp_XNFE, axis), axis=axis), axis)
    later = jnp.concatenate(
        [jax.lax.slice_in_dim(suffix, 1, n, axis=axis),
         jnp.zeros_like(jax.lax.slice_in_dim(suffix, 0, 1, axis=axis))],
        axis=axis)
    return later, jax.lax.index_in_dim(suffix, 0, axis, keepdims=False)
  neg_in = -chunked.finite_or_zero(jax.lax.stop_gradient(m_in_XN))
  neg_scale, suffix = jax.lax.associative_scan(
      combine, (neg_in, dp_XNFE), reverse=True, axis=axis)
  # Entry k of the suffix summarizes chunks k..N-1; chunk k's summary T_k
  # reaches chunks k+1.. only.
  later_scale = jnp.concatenate(
      [jax.lax.slice_in_dim(neg_scale, 1, n, axis=axis),
       jnp.full_like(jax.lax.slice_in_dim(neg_scale, 0, 1, axis=axis),
                     -jnp.inf)], axis=axis)
  later = jnp.concatenate(
      [jax.lax.slice_in_dim(suffix, 1, n, axis=axis),
       jnp.zeros_like(jax.lax.slice_in_dim(suffix, 0, 1, axis=axis))],
      axis=axis)
  m_out = jax.lax.stop_gradient(m_out_XN)
  d_t = later * _scale_to(m_out, later_scale)
  first_scale = jax.lax.index_in_dim(neg_scale, 0, axis, keepdims=False)
  first = jax.lax.index_in_dim(suffix, 0, axis, keepdims=False)
  d_s0 = first * _scale_to(jax.lax.stop_gradient(m0_X), first_scale)
  return d_t, d_s0


def _scale_to(m: jax.Array, neg_scale: jax.Array) -> jax.Array:
  """`exp(m - s)` for a transposed summary kept relative to `-s =
  neg_scale` (`[X..., 1, 1]`); 0 where the summary is empty or m = -inf."""
  ok = jnp.isfinite(neg_scale) & jnp.isfinite(m)
  w = jnp.exp(jnp.minimum(jnp.where(ok, m + neg_scale, -jnp.inf), 0.0))
  return w[..., None, None]


def summarize(kf_XLF: jax.Array, amp_XL: jax.Array | None,
              v_XLE: jax.Array, keep_XL: jax.Array | None) -> tuple:
  """The summary `(m [X...], S [X..., F, E])` of a whole segment of keys.

  Args:
    kf_XLF: float32 key features before the amplitude (`feats`).
    amp_XL: float32 key log-amplitudes, or None.
    v_XLE: float32 values with the ones column appended.
    keep_XL: bool, broadcastable against `kf_XLF.shape[:-1]`, False at
      padded keys (they leave m and S whatever they hold), or None.
  """
  if keep_XL is not None:
    keep_XL = jnp.broadcast_to(keep_XL, kf_XLF.shape[:-1])
    kf_XLF = jnp.where(keep_XL[..., None], kf_XLF, 0.0)
  m = None
  if amp_XL is not None:
    masked = amp_XL if keep_XL is None else jnp.where(keep_XL, amp_XL,
                                                      -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(masked, axis=-1))
    ref = chunked.finite_or_zero(m)[..., None]
    kf_XLF = kf_XLF * jnp.exp(jnp.minimum(masked - ref, 0.0))[..., None]
  return m, jnp.einsum("...lf,...le->...fe", kf_XLF, v_XLE)
