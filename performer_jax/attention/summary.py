"""Segment summaries of keys and the associative operator that joins them.

A segment (a chunk, or one device's keys) is `(m, S)`: m float32 `[X...]`,
the max log-amplitude of its unpadded keys (`-inf` if none; None without
amplitudes); S float32 `[X..., F, E]`, relative to `finite_or_zero(m)`:
`sum_j exp(a_j - m) phi~(k_j) [v_j, 1]^T`; any m >= the max is valid. Join:
  `(m_a, S_a) + (m_b, S_b) = (m, S_a exp(m_a - m) + S_b exp(m_b - m))`,
  `m = max(m_a, m_b)`: associative, identity `(-inf, 0)`, exponents <= 0.
The maxima cancel, so carry no gradient. A prefix of N summaries is, for
fixed maxima, a linear map with weights <= 1: it is computed as masked,
weighted sums in two levels (blocks of about (2N)^(1/3) segments, then the
blocks), whose program does not grow with N, unlike an associative scan's
log N unrolled levels (the train step's compile time, docs/benchmarks.md);
its transpose applies the same weights the other way.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked


def _scale(m_part: jax.Array, m_whole: jax.Array) -> jax.Array:
  """`exp(m_part - m_whole)` (<= 1 where `m_part <= m_whole`), 0 for an
  empty part; m_whole as `finite_or_zero` keeps it."""
  return jnp.exp(jnp.minimum(m_part - chunked.finite_or_zero(m_whole), 0.0))


def combine(a: tuple, b: tuple) -> tuple:
  """`a + b` for summaries `(m, S)` (m None: plain sums), elementwise over
  any leading axes."""
  (m_a, s_a), (m_b, s_b) = a, b
  if m_a is None:
    return None, s_a + s_b
  m = jnp.maximum(m_a, m_b)
  return m, (s_a * _scale(m_a, m)[..., None, None] +
             s_b * _scale(m_b, m)[..., None, None])


def fold(m_PX: jax.Array | None, s_PXFE: jax.Array,
         visible_P: jax.Array) -> tuple:
  """`(m, S)`: the P summaries along the leading axis where `visible_P` is
  True, folded with `combine`'s operator (a P-term weighted sum, every
  weight <= 1): the summary of the devices before this one (sequence.py),
  or of a sequence's stretches (pallas_segments.py)."""
  vis_PX = visible_P.reshape((-1,) + (1,) * (s_PXFE.ndim - 3))
  if m_PX is None:
    return None, jnp.sum(jnp.where(vis_PX[..., None, None], s_PXFE, 0.0),
                         axis=0)
  m_vis = jnp.where(vis_PX, m_PX, -jnp.inf)
  m_X = jnp.max(m_vis, axis=0)
  w_PX = _scale(m_vis, m_X)
  return m_X, jnp.sum(w_PX[..., None, None] * s_PXFE, axis=0)


class _Weights(NamedTuple):
  """The inclusive prefix of N summaries E_n = (m_n, S_n) as a linear map of
  the S_n, in blocks of K: within block b, `P[b, i] = sum_j w[b, i, j]
  S[b, j] + entry[b, i] Q_b`, Q_b the blocks before b, `Q = w_blocks @ (sum_j
  total[b, j] S[b, j])`. Every weight is an `exp` of a difference <= 0,
  masked to what comes before; m_in `[X..., N]` is the running max."""
  m_in: jax.Array       # [X..., N]
  w: jax.Array          # [X..., NB, K, K]
  entry: jax.Array      # [X..., NB, K]
  w_blocks: jax.Array   # [X..., NB, NB]
  total: jax.Array      # [X..., NB, K]


def _block_size(n: int) -> int:
  """K: the power of two nearest (2n)^(1/3), which minimizes the work of
  the two levels, n K + (n / K)^2 (times F E)."""
  return 1 << max(0, round(math.log2(2.0 * n) / 3))


def _weights(m_XN: jax.Array) -> _Weights:
  """The prefix weights of the maxima `m_XN` (-inf: an empty summary)."""
  n = m_XN.shape[-1]
  k = _block_size(n)
  nb = -(-n // k)
  m_XN = jnp.where(jnp.arange(nb * k) < n,
                   chunked.pad_axis(m_XN, m_XN.ndim - 1, nb * k - n),
                   -jnp.inf)
  m_XBK = m_XN.reshape(m_XN.shape[:-1] + (nb, k))
  run_XBK = jax.lax.cummax(m_XBK, axis=m_XBK.ndim - 1)
  top_XB = run_XBK[..., -1]
  before_XB = jnp.concatenate(
      [jnp.full_like(top_XB[..., :1], -jnp.inf), top_XB[..., :-1]], -1)
  entry_XB = jax.lax.cummax(before_XB, axis=before_XB.ndim - 1)
  m_in_XBK = jnp.maximum(entry_XB[..., None], run_XBK)
  upto_KK = jnp.arange(k)[None] <= jnp.arange(k)[:, None]
  earlier_BB = jnp.arange(nb)[None] < jnp.arange(nb)[:, None]
  return _Weights(
      m_in=m_in_XBK.reshape(m_XN.shape)[..., :n],
      w=jnp.where(upto_KK, _scale(m_XBK[..., None, :], m_in_XBK[..., None]),
                  0.0),
      entry=_scale(entry_XB[..., None], m_in_XBK),
      w_blocks=jnp.where(earlier_BB, _scale(top_XB[..., None, :],
                                            entry_XB[..., None]), 0.0),
      total=_scale(m_XBK, top_XB[..., None]))


def _blocked(w: _Weights, s_XNFE: jax.Array) -> jax.Array:
  """`[X..., N, F, E]` -> `[X..., NB, K, F, E]`, zero-padded."""
  nb, k = w.total.shape[-2:]
  s_XNFE = chunked.pad_axis(s_XNFE, s_XNFE.ndim - 3,
                            nb * k - s_XNFE.shape[-3])
  return s_XNFE.reshape(s_XNFE.shape[:-3] + (nb, k) + s_XNFE.shape[-2:])


def _unblocked(x_XBKFE: jax.Array, n: int) -> jax.Array:
  """`[X..., NB, K, F, E]` -> `[X..., n, F, E]`, the padding dropped."""
  x_XNFE = x_XBKFE.reshape(x_XBKFE.shape[:-4] + (-1,) + x_XBKFE.shape[-2:])
  return x_XNFE[..., :n, :, :]


def _apply(w: _Weights, s_XNFE: jax.Array) -> jax.Array:
  """The prefix P `[X..., N, F, E]` of the summaries' S."""
  hi = jax.lax.Precision.HIGHEST
  s_XBKFE = _blocked(w, s_XNFE)
  total_XBFE = jnp.einsum("...bk,...bkfe->...bfe", w.total, s_XBKFE,
                          precision=hi)
  q_XBFE = jnp.einsum("...ab,...bfe->...afe", w.w_blocks, total_XBFE,
                      precision=hi)
  p_XBKFE = jnp.einsum("...bij,...bjfe->...bife", w.w, s_XBKFE,
                       precision=hi) + (q_XBFE[..., None, :, :] *
                                        w.entry[..., None, None])
  return _unblocked(p_XBKFE, s_XNFE.shape[-3])


def _apply_transpose(w: _Weights, dp_XNFE: jax.Array) -> jax.Array:
  """The transpose of `_apply`: dS `[X..., N, F, E]` from dP."""
  hi = jax.lax.Precision.HIGHEST
  dp_XBKFE = _blocked(w, dp_XNFE)
  dq_XBFE = jnp.einsum("...bi,...bife->...bfe", w.entry, dp_XBKFE,
                       precision=hi)
  d_total_XBFE = jnp.einsum("...ab,...afe->...bfe", w.w_blocks, dq_XBFE,
                            precision=hi)
  ds_XBKFE = jnp.einsum("...bij,...bife->...bjfe", w.w, dp_XBKFE,
                        precision=hi) + (d_total_XBFE[..., None, :, :] *
                                         w.total[..., None, None])
  return _unblocked(ds_XBKFE, dp_XNFE.shape[-3])


def _elements_max(m_XN, m0_X, axis, like_XNFE):
  """The maxima of the exclusive prefix's elements `[seed, T_0..T_{N-2}]`,
  moved to the last axis (zeros, every weight 1, without amplitudes)."""
  if m_XN is None:
    return jnp.zeros(jnp.moveaxis(like_XNFE, axis, -3).shape[:-2],
                     like_XNFE.dtype)
  m_elems = jnp.concatenate(
      [jnp.expand_dims(m0_X, axis),
       jax.lax.slice_in_dim(m_XN, 0, m_XN.shape[axis] - 1, axis=axis)],
      axis=axis)
  return jnp.moveaxis(jax.lax.stop_gradient(m_elems), axis, -1)


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
    `(m_in [X..., N], P [X..., N, F, E])`: P_n relative to m_in_n (m_in
    None without amplitudes).
  """
  m0, s0 = seed
  if m0 is not None:
    # An empty summary (m = -inf) is ignored, the seed as any other.
    s0 = jnp.where(jnp.isfinite(m0)[..., None, None], s0, 0.0)
  s_elems = jnp.concatenate(
      [jnp.expand_dims(s0, axis),
       jax.lax.slice_in_dim(s_XNFE, 0, s_XNFE.shape[axis] - 1, axis=axis)],
      axis=axis)
  w = _weights(_elements_max(m_XN, m0, axis, s_XNFE))
  p = jnp.moveaxis(_apply(w, jnp.moveaxis(s_elems, axis, -3)), -3, axis)
  return (None if m_XN is None else jnp.moveaxis(w.m_in, -1, axis)), p


def exclusive_prefix_transpose(m_XN: jax.Array | None, m0_X, dp_XNFE,
                               axis: int) -> tuple[jax.Array, jax.Array]:
  """The backward pass of `exclusive_prefix(m_XN, T, (m0_X, S0), axis)`:
  `(dT [X..., N, F, E], dS0)` from the cotangent of P (for fixed maxima P
  is linear in T and S0)."""
  w = _weights(_elements_max(m_XN, m0_X, axis, dp_XNFE))
  d_elems = jnp.moveaxis(
      _apply_transpose(w, jnp.moveaxis(dp_XNFE, axis, -3)), -3, axis)
  n = dp_XNFE.shape[axis]
  d_s0 = jax.lax.index_in_dim(d_elems, 0, axis, keepdims=False)
  if m0_X is not None:  # an empty seed is ignored: no cotangent
    d_s0 = jnp.where(jnp.isfinite(m0_X)[..., None, None], d_s0, 0.0)
  # Element n + 1 is T_n; T_{N-1} reaches no P.
  d_t = jnp.concatenate(
      [jax.lax.slice_in_dim(d_elems, 1, n, axis=axis),
       jnp.zeros_like(jax.lax.slice_in_dim(d_elems, 0, 1, axis=axis))],
      axis=axis)
  return d_t, d_s0


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
