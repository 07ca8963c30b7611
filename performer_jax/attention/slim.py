"""SLiM: causal FAVOR+ whose backward pass recomputes inside each chunk.

A `jax.custom_vjp` over `chunked.chunk_terms`: the forward `lax.scan` keeps
only q, k, v and the state entering each chunk (`[N, B, H, F, Dv+1]`,
N = L / C); the reverse scan rebuilds each chunk's features and scores and
maps the output cotangent and dS_n through one `jax.vjp` of the chunk.
Memory beyond q, k, v: O(L F Dv / C + C^2 + C F) per layer, time O(L).
States are stored, not rebuilt by subtraction: undoing a rescaling by
`exp(M_{n-1} - M_n) <= 1` would multiply rounding error (or revive
underflowed terms) by up to `exp(M_n - M_{n-1})`. Everything is float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked
from performer_jax.attention import feature_maps
from performer_jax.attention import vma


def _chunk(kernel, s_BHFE, m_BH, q_BHCD, k_BHCD, v_BHCE, keep_BC, proj):
  """One chunk: `(state in, running max in, inputs) -> (state out, max out,
  normalized output [B, H, C, E-1])`. The state is relative to `exp(m)`."""
  feature_fn = feature_maps.resolve(kernel, proj)
  qf, _ = feature_fn(q_BHCD)
  kf, amp = feature_fn(k_BHCD)
  terms = chunked.chunk_terms(qf, kf, amp, v_BHCE, keep_BC[:, None, :], m_BH)
  num = chunked.attend(s_BHFE, terms)
  out = feature_maps.normalize(num[..., :-1], num[..., -1:],
                               signed_features=kernel == "softmax_trig")
  return chunked.carry(s_BHFE, terms), terms.m_out, out


def _forward(kernel, q, k, v, keep, proj, init):
  """Scan over chunks; returns outputs `[N, B, H, C, E-1]`, the states
  entering every chunk and the final state."""
  def step(carry, xs):
    s, m = carry
    q_c, k_c, v_c, keep_c = xs
    s_out, m_out, out = _chunk(kernel, s, m, q_c, k_c, v_c, keep_c, proj)
    return (s_out, m_out), (out, s, m)
  final, (out, s_in, m_in) = jax.lax.scan(step, init, (q, k, v, keep))
  return out, (s_in, m_in), final


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _slim_core(kernel, q_NBHCD, k_NBHCD, v_NBHCE, keep_NBC, proj, init):
  return _forward(kernel, q_NBHCD, k_NBHCD, v_NBHCE, keep_NBC, proj, init)[0]


def _slim_fwd(kernel, q, k, v, keep, proj, init):
  out, (s_in, m_in), _ = _forward(kernel, q, k, v, keep, proj, init)
  return out, (q, k, v, keep, proj, s_in, m_in)


def _slim_bwd(kernel, residuals, g_NBHCD):
  q, k, v, keep, proj, s_in, m_in = residuals

  def step(ds_out, xs):
    q_c, k_c, v_c, keep_c, s_c, m_c, g_c = xs
    def chunk_fn(s, q_, k_, v_):
      s_out, _, out = _chunk(kernel, s, m_c, q_, k_, v_, keep_c, proj)
      return s_out, out
    _, vjp = jax.vjp(chunk_fn, s_c, q_c, k_c, v_c)
    ds_in, dq, dk, dv = vjp((ds_out, g_c))
    return ds_in, (dq, dk, dv)

  ds_last, (dq, dk, dv) = jax.lax.scan(
      step, jnp.zeros_like(s_in[0]), (q, k, v, keep, s_in, m_in, g_NBHCD),
      reverse=True)
  dproj = None if proj is None else jnp.zeros_like(proj)
  return (dq, dk, dv, None, dproj,
          (ds_last, jnp.zeros_like(m_in[0])))


_slim_core.defvjp(_slim_fwd, _slim_bwd)


@functools.partial(jax.named_call, name="favor_causal_slim")
def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel, chunk_size: int, seed: tuple | None = None) -> jax.Array:
  """Normalized causal FAVOR+ on prepared inputs (layout.favor_inputs), with
  the SLiM backward pass: float32 `[B, H, L, Dv]`.

  `seed`: None, or the summary `(m0 [B, H] or None, S0 [B, H, F, Dv+1])` of
  the keys before the first token (sequence.py): the scan starts from it,
  and the backward pass returns its cotangent."""
  b, h, length, d = x_q_BHLD.shape
  p = chunked.pad_inputs(x_q_BHLD, x_k_BHLD, v_BHLE, key_mask_BL, chunk_size)
  to_n = lambda x: jnp.moveaxis(chunked.to_chunks(x, p.c), 2, 0)
  s0, m0 = chunked.initial_state(
      b, h, chunked.feature_dim(kernel, projection, d), p.v.shape[-1])
  if seed is not None:
    # Kernels without amplitudes ignore the running max: keep it at -inf.
    m0 = m0 if seed[0] is None else seed[0]
    s0 = seed[1]
  # One varying-axes type for every input (vma.py): the scan carries and the
  # custom VJP's cotangents then keep their types inside shard_map.
  q, k, v, keep, proj, s0, m0 = vma.align(
      to_n(p.x_q), to_n(p.x_k), to_n(p.v), jnp.moveaxis(p.keep_BNC, 1, 0),
      projection, s0, m0)
  out_NBHCD = _slim_core(kernel, q, k, v, keep, proj, (s0, m0))
  return jnp.moveaxis(out_NBHCD, 0, 2).reshape(
      b, h, p.n * p.c, -1)[:, :, :length]
