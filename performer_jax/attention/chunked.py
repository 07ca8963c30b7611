"""The chunked causal FAVOR+ step, shared by every causal implementation.

Query i gets `phi(q_i)^T S_i`, `S_i = sum_{j<=i} phi(k_j) [v_j, 1]^T`
(`[F, Dv+1]`, last column the normalizer); `chunk_terms` computes C tokens:
the masked `tril(Q'_c K'_c^T) V_c` plus the state carried in. Keys are
measured against the running max `M_i = max_{j<=i} log_amp_j`: every weight
is <= 1 and no later key can change query i's output, not even through
underflow; it cancels exactly, so carries no gradient. States are relative
to the running max at their end. Padded keys have log-amplitude `-inf` and
zero features; a `-inf` running max is replaced by 0 where it multiplies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from performer_jax.attention import feature_maps
from performer_jax.attention import layout


def finite_or_zero(x: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(x), x, 0.0)


def pad_axis(x: jax.Array, axis: int, pad: int) -> jax.Array:
  """Appends `pad` zeros along `axis`."""
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def num_chunks(length: int, chunk_size: int) -> tuple[int, int, int]:
  """`(C, N, pad)`: the chunk length (at most `length`), the number of chunks
  and the padding that makes the length `N * C`."""
  c = max(1, min(int(chunk_size), length))
  n = -(-length // c)
  return c, n, n * c - length


class Padded(NamedTuple):
  """Causal inputs padded to whole chunks.

  c, n: chunk length and number of chunks; x_q, x_k `[B, H, N*C, D]`;
  v `[B, H, N*C, Dv+1]` with the ones column; keep_BNC bool (False at
  padded keys and at the padding).
  """
  c: int
  n: int
  x_q: jax.Array
  x_k: jax.Array
  v: jax.Array
  keep_BNC: jax.Array


def pad_inputs(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLD: jax.Array,
               key_mask_BL: jax.Array | None, chunk_size: int) -> Padded:
  """Pads prepared causal inputs (layout.favor_inputs) to whole chunks."""
  b, _, length, _ = x_q_BHLD.shape
  c, n, pad = num_chunks(length, chunk_size)
  keep_BL = (jnp.ones((b, length), bool) if key_mask_BL is None
             else key_mask_BL)
  x_q, x_k, v = (pad_axis(x, 2, pad) for x in (
      x_q_BHLD, x_k_BHLD, layout.append_ones(v_BHLD)))
  return Padded(c, n, x_q, x_k, v,
                pad_axis(keep_BL, 1, pad).reshape(b, n, c))


def to_chunks(x_BHL: jax.Array, c: int) -> jax.Array:
  """`[B, H, N*C, ...]` -> `[B, H, N, C, ...]`."""
  b, h, length = x_BHL.shape[:3]
  return x_BHL.reshape((b, h, length // c, c) + x_BHL.shape[3:])


class ChunkTerms(NamedTuple):
  """One chunk's contribution, for any leading dimensions `X...`.

  Attributes:
    intra: `[X..., C, E]`, the numerator (and normalizer column) from keys of
      the same chunk, `sum_{j<=i} (phi(q_i).phi(k_j)) exp(a_j - M_i) v_j`.
    q_in: `[X..., C, F]`, query features rescaled by `exp(m_in - M_i)`: the
      incoming state S (relative to m_in) adds `q_in @ S`.
    summary: `[X..., F, E]`, the chunk's keys relative to its end max,
      `sum_j exp(a_j - m_out) phi(k_j) v_j^T`.
    m_out: `[X...]`, the running max after the chunk (`-inf` if no key was
      seen yet; equal to m_in for kernels without amplitudes).
    decay: `[X...]`, `exp(m_in - m_out) <= 1`: the incoming state leaves the
      chunk as `S * decay + summary`.
  """
  intra: jax.Array
  q_in: jax.Array
  summary: jax.Array
  m_out: jax.Array
  decay: jax.Array


def chunk_terms(qf_XCF: jax.Array, kf_XCF: jax.Array,
                amp_XC: jax.Array | None, v_XCE: jax.Array,
                keep_XC: jax.Array, m_in_X: jax.Array) -> ChunkTerms:
  """The terms of one chunk (or of many at once, along leading axes).

  Args:
    qf_XCF: float32 query features.
    kf_XCF: float32 key features before the amplitude (`feats`).
    amp_XC: float32 key log-amplitudes, or None for kernels without them.
    v_XCE: float32 values with the ones column appended.
    keep_XC: bool, False at padded keys; broadcastable against amp's shape.
    m_in_X: float32 running max of the keys before the chunk (`-inf` at the
      start of the sequence); unused (may be None) when amp_XC is None.
  """
  c = qf_XCF.shape[-2]
  causal_CC = jnp.tril(jnp.ones((c, c), bool))
  keep_XC = jnp.broadcast_to(keep_XC, kf_XCF.shape[:-1])
  kf_XCF = jnp.where(keep_XC[..., None], kf_XCF, 0.0)
  if amp_XC is None:
    scores = jnp.einsum("...if,...jf->...ij", qf_XCF, kf_XCF)
    scores = jnp.where(causal_CC, scores, 0.0)
    return ChunkTerms(
        intra=jnp.einsum("...ij,...je->...ie", scores, v_XCE),
        q_in=qf_XCF,
        summary=jnp.einsum("...jf,...je->...fe", kf_XCF, v_XCE),
        m_out=m_in_X, decay=jnp.ones(qf_XCF.shape[:-2], jnp.float32))
  masked_XC = jnp.where(keep_XC, amp_XC, -jnp.inf)
  run_raw_XC = jnp.maximum(m_in_X[..., None], jax.lax.cummax(
      masked_XC, axis=masked_XC.ndim - 1))
  run_XC = jax.lax.stop_gradient(finite_or_zero(run_raw_XC))
  m_prev_X1 = jax.lax.stop_gradient(finite_or_zero(m_in_X))[..., None]
  m_end_X1 = run_XC[..., -1:]
  kf_XCF = kf_XCF * jnp.exp(jnp.minimum(amp_XC - run_XC, 0.0))[..., None]
  # exp(M_j - M_i) <= 1 for j <= i; the minimum guards the masked j > i.
  pair_XCC = jnp.exp(jnp.minimum(run_XC[..., None, :] - run_XC[..., :, None],
                                 0.0))
  scores = jnp.einsum("...if,...jf->...ij", qf_XCF, kf_XCF)
  scores = jnp.where(causal_CC, scores * pair_XCC, 0.0)
  to_end_XC = jnp.exp(jnp.minimum(run_XC - m_end_X1, 0.0))
  return ChunkTerms(
      intra=jnp.einsum("...ij,...je->...ie", scores, v_XCE),
      q_in=qf_XCF * jnp.exp(jnp.minimum(m_prev_X1 - run_XC, 0.0))[..., None],
      summary=jnp.einsum("...jf,...je->...fe", kf_XCF * to_end_XC[..., None],
                         v_XCE),
      m_out=run_raw_XC[..., -1],
      decay=jnp.exp(jnp.minimum(m_prev_X1 - m_end_X1, 0.0))[..., 0])


def running_max(amp_BHL: jax.Array, keep_B1L: jax.Array | None
                ) -> tuple[jax.Array, jax.Array]:
  """The stabilizer over a whole sequence at once (for kernels that walk the
  chunks themselves): `(exp(a_j - M_j) <= 1, M_j)`, M_j the running max over
  the unpadded keys up to j (0 before the first one). No gradient flows into
  M: it cancels."""
  if keep_B1L is not None:
    amp_BHL = jnp.where(keep_B1L, amp_BHL, -jnp.inf)
  run_BHL = jax.lax.stop_gradient(finite_or_zero(
      jax.lax.cummax(amp_BHL, axis=amp_BHL.ndim - 1)))
  return jnp.exp(jnp.minimum(amp_BHL - run_BHL, 0.0)), run_BHL


def chunk_entry_max(amp_BHNC: jax.Array | None, keep_BHNC: jax.Array,
                    m_start_BH: jax.Array | None = None) -> jax.Array | None:
  """`m_in` of every chunk at once: the max log-amplitude of the unpadded keys
  in earlier chunks (`[B, H, N]`, `-inf` for the first), or None.
  `m_start_BH`, if given, is the max over keys before the first chunk (those
  of earlier devices, sequence.py): every m_in is at least it."""
  if amp_BHNC is None:
    return None
  chunk_max = jnp.max(jnp.where(keep_BHNC, amp_BHNC, -jnp.inf), axis=-1)
  first = (jnp.full_like(chunk_max[..., :1], -jnp.inf) if m_start_BH is None
           else jnp.broadcast_to(m_start_BH[..., None],
                                 chunk_max[..., :1].shape))
  before = jnp.concatenate([first, chunk_max[..., :-1]], axis=-1)
  return jax.lax.cummax(before, axis=before.ndim - 1)


def initial_state(batch: int, heads: int, num_features: int, width: int
                  ) -> tuple[jax.Array, jax.Array]:
  """The state before the first token: zero sums `[B, H, F, E]` and a
  running max of `-inf` (`[B, H]`)."""
  return (jnp.zeros((batch, heads, num_features, width), jnp.float32),
          jnp.full((batch, heads), -jnp.inf, jnp.float32))


def _feature_shapes(kernel, proj, head_dim: int):
  return jax.eval_shape(lambda x: feature_maps.resolve(kernel, proj)(x),
                        jax.ShapeDtypeStruct((1, head_dim), jnp.float32))


def feature_dim(kernel, proj, head_dim: int) -> int:
  """F, the number of features the kernel makes from `head_dim` inputs."""
  return _feature_shapes(kernel, proj, head_dim)[0].shape[-1]


def has_amplitude(kernel, proj, head_dim: int) -> bool:
  """Whether the kernel's features carry a log-amplitude (a stabilizer)."""
  return _feature_shapes(kernel, proj, head_dim)[1] is not None


def carry(state_XFE: jax.Array, terms: ChunkTerms) -> jax.Array:
  """The state leaving a chunk, from the state entering it."""
  return state_XFE * terms.decay[..., None, None] + terms.summary


def attend(state_XFE: jax.Array, terms: ChunkTerms) -> jax.Array:
  """Unnormalized output `[X..., C, E]` of a chunk given its entering state."""
  return terms.intra + jnp.einsum("...if,...fe->...ie", terms.q_in, state_XFE)
