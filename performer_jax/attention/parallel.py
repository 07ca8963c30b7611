"""Scan-free causal FAVOR+ (`implementation="parallel"`, see api.py).

All chunks' terms at once (`chunked.chunk_terms`), then the state entering
every chunk, `P_n = seed + T_0 + ... + T_{n-1}`, as summary.py's exclusive
prefix: two levels of weighted sums, no loop in the compiled program
(test_parallel.py checks the HLO) and a program that does not grow with L.
A `jax.custom_vjp` keeps q, k, v and the states P, never the features; the
backward recomputes the terms and transposes the prefix (summary.py).
`seed` (sequence.py) summarizes the keys before this device's first token;
its cotangent is returned. Design: docs/long_context.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked
from performer_jax.attention import feature_maps
from performer_jax.attention import summary
from performer_jax.attention import vma

_N_AXIS = 2  # Chunk axis of the [B, H, N, ...] layout.


def _terms(kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, m0_BH):
  """All chunks' `(intra, q_in, summary)` and, as auxiliary stop-gradient
  values, `(m_in, m_out)` `[B, H, N]` (None without amplitudes)."""
  feature_fn = feature_maps.resolve(kernel, proj)
  qf_BHNCF, _ = feature_fn(q_BHNCD)
  kf_BHNCF, amp_BHNC = feature_fn(k_BHNCD)
  keep_B1NC = keep_BNC[:, None]
  m_in_BHN = None
  if amp_BHNC is not None:
    m_in_BHN = jax.lax.stop_gradient(chunked.chunk_entry_max(
        amp_BHNC, keep_B1NC, m0_BH))
  t = chunked.chunk_terms(qf_BHNCF, kf_BHNCF, amp_BHNC, v_BHNCE, keep_B1NC,
                          m_in_BHN)
  m_out_BHN = None if amp_BHNC is None else jax.lax.stop_gradient(t.m_out)
  return (t.intra, t.q_in, t.summary), (m_in_BHN, m_out_BHN)


def _normalize(kernel, num_BHNCE):
  return feature_maps.normalize(num_BHNCE[..., :-1], num_BHNCE[..., -1:],
                                signed_features=kernel == "softmax_trig")


def _attend(intra_BHNCE, q_in_BHNCF, p_BHNFE):
  return intra_BHNCE + jnp.einsum("bhncf,bhnfe->bhnce", q_in_BHNCF, p_BHNFE)


def _forward(kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, s0_BHFE,
             m0_BH):
  """Normalized outputs `[B, H, N, C, E-1]` and the entry states P."""
  (intra, q_in, t_BHNFE), (_, m_out_BHN) = _terms(
      kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, m0_BH)
  _, p_BHNFE = summary.exclusive_prefix(m_out_BHN, t_BHNFE, (m0_BH, s0_BHFE),
                                        _N_AXIS)
  return _normalize(kernel, _attend(intra, q_in, p_BHNFE)), p_BHNFE


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, s0_BHFE, m0_BH):
  return _forward(kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, s0_BHFE,
                  m0_BH)[0]


def _core_fwd(kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, s0_BHFE,
              m0_BH):
  out, p_BHNFE = _forward(kernel, q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj,
                          s0_BHFE, m0_BH)
  # Residuals: the inputs and the chunk-entry states, no feature tensor.
  return out, (q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, m0_BH, p_BHNFE)


def _core_bwd(kernel, res, g_BHNCD):
  q_BHNCD, k_BHNCD, v_BHNCE, keep_BNC, proj, m0_BH, p_BHNFE = res
  terms, pull_back, (_, m_out_BHN) = jax.vjp(
      lambda q, k, v: _terms(kernel, q, k, v, keep_BNC, proj, m0_BH),
      q_BHNCD, k_BHNCD, v_BHNCE, has_aux=True)
  intra_BHNCE, q_in_BHNCF, _ = terms
  _, normalize_vjp = jax.vjp(functools.partial(_normalize, kernel),
                             _attend(intra_BHNCE, q_in_BHNCF, p_BHNFE))
  (g_num_BHNCE,) = normalize_vjp(g_BHNCD)
  # out_n = f(intra_n + q_in_n P_n): the cotangents of P and of q_in.
  g_p_BHNFE = jnp.einsum("bhncf,bhnce->bhnfe", q_in_BHNCF, g_num_BHNCE)
  g_q_in_BHNCF = jnp.einsum("bhnce,bhnfe->bhncf", g_num_BHNCE, p_BHNFE)
  # P is a prefix of the chunk summaries and the seed: its transpose.
  g_t_BHNFE, g_s0_BHFE = summary.exclusive_prefix_transpose(
      m_out_BHN, m0_BH, g_p_BHNFE, _N_AXIS)
  dq, dk, dv = pull_back((g_num_BHNCE, g_q_in_BHNCF, g_t_BHNFE))
  dproj = None if proj is None else jnp.zeros_like(proj)
  dm0 = None if m0_BH is None else jnp.zeros_like(m0_BH)
  return (dq, dk, dv, None, dproj, vma.like(g_s0_BHFE, q_BHNCD),
          vma.like(dm0, q_BHNCD))


_core.defvjp(_core_fwd, _core_bwd)


@functools.partial(jax.named_call, name="favor_causal_parallel")
def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel, chunk_size: int, seed: tuple | None = None) -> jax.Array:
  """Normalized causal FAVOR+ on prepared inputs (layout.favor_inputs),
  without a sequential loop: float32 `[B, H, L, Dv]`.

  Args:
    x_q_BHLD, x_k_BHLD: float32, heads-major, scaled by `D^(-1/4)`.
    v_BHLE: float32 values.
    key_mask_BL: bool or None; padded keys must hold finite values.
    projection: float32 `[M, D]` or None (as the kernel needs).
    kernel: a feature map name or function.
    chunk_size: C, tokens per chunk.
    seed: None, or the summary `(m0 [B, H] or None, S0 [B, H, F, Dv+1])` of
      the keys before the first token (sequence.py), in summary.py's form.
  """
  b, h, length, d = x_q_BHLD.shape
  p = chunked.pad_inputs(x_q_BHLD, x_k_BHLD, v_BHLE, key_mask_BL, chunk_size)
  to_chunks = lambda x: chunked.to_chunks(x, p.c)
  if seed is None:
    s0, m0 = chunked.initial_state(
        b, h, chunked.feature_dim(kernel, projection, d), p.v.shape[-1])
    has_amp = chunked.has_amplitude(kernel, projection, d)
    seed = (m0 if has_amp else None, s0)
  m0, s0 = seed
  # One varying-axes type for every input (vma.py): the custom VJP's
  # cotangents then have its inputs' types inside shard_map.
  q, k, v, keep, proj, s0, m0 = vma.align(
      to_chunks(p.x_q), to_chunks(p.x_k), to_chunks(p.v), p.keep_BNC,
      projection, s0, m0)
  out_BHNCD = _core(kernel, q, k, v, keep, proj, s0, m0)
  return out_BHNCD.reshape(b, h, p.n * p.c, -1)[:, :, :length]
