"""FAVOR+ in plain JAX under autodiff (`implementation="autodiff"`, api.py).

With Q' = phi(Q), K' = phi(K): `D^-1 (Q' ((K')^T V))`,
`D = diag(Q' ((K')^T 1))`, the normalizer from the same matmuls through a
ones column appended to V. Bidirectional key amplitudes are divided by
`exp(M)`, M the max over the unpadded keys (it cancels); causal runs a
`lax.scan` over the chunk states (chunked.py). It serves every kernel, user
feature functions included, and is the reference for the other paths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked
from performer_jax.attention import feature_maps
from performer_jax.attention import layout
from performer_jax.attention import vma


def bidirectional(x_q_BHLD: jax.Array, x_k_BHSD: jax.Array,
                  v_BHSE: jax.Array, key_mask_BS: jax.Array | None,
                  projection: jax.Array | None, *, kernel) -> jax.Array:
  """Normalized bidirectional FAVOR+ on prepared inputs (layout.favor_inputs):
  float32 `[B, H, L, Dv]`."""
  feature_fn = feature_maps.resolve(kernel, projection)
  qf_BHLF, _ = feature_fn(x_q_BHLD)
  kf_BHSF, amp_BHS = feature_fn(x_k_BHSD)
  keep_B1S = None if key_mask_BS is None else key_mask_BS[:, None, :]
  if amp_BHS is not None:
    if keep_B1S is not None:
      amp_BHS = jnp.where(keep_B1S, amp_BHS, -jnp.inf)
    m_BH1 = jax.lax.stop_gradient(chunked.finite_or_zero(
        jnp.max(amp_BHS, axis=2, keepdims=True)))
    kf_BHSF = kf_BHSF * jnp.exp(amp_BHS - m_BH1)[..., None]
  if keep_B1S is not None:
    kf_BHSF = jnp.where(keep_B1S[..., None], kf_BHSF, 0.0)
  kv_BHFE = jnp.einsum("bhsf,bhse->bhfe", kf_BHSF, layout.append_ones(v_BHSE))
  num_BHLE = jnp.einsum("bhlf,bhfe->bhle", qf_BHLF, kv_BHFE)
  return feature_maps.normalize(num_BHLE[..., :-1], num_BHLE[..., -1:],
                                signed_features=kernel == "softmax_trig")


def _prefix_states(summary_NBHFE: jax.Array, decay_NBH: jax.Array,
                   init_BHFE: jax.Array | None = None) -> jax.Array:
  """The state entering every chunk: `P_n = P_{n-1} decay_{n-1} + T_{n-1}`,
  `P_0 = init` (zero by default)."""
  def step(state_BHFE, inputs):
    summary_BHFE, decay_BH = inputs
    return state_BHFE * decay_BH[..., None, None] + summary_BHFE, state_BHFE
  if init_BHFE is None:
    init_BHFE = jnp.zeros_like(summary_NBHFE[0])
  # The carry keeps one type inside shard_map (vma.py).
  init_BHFE = vma.like(init_BHFE, summary_NBHFE, decay_NBH)
  _, prefix_NBHFE = jax.lax.scan(step, init_BHFE, (summary_NBHFE, decay_NBH))
  return prefix_NBHFE


def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel, chunk_size: int, seed: tuple | None = None) -> jax.Array:
  """Normalized causal FAVOR+ on prepared inputs: float32 `[B, H, L, Dv]`.

  `seed`: None, or the summary `(m0 [B, H] or None, S0 [B, H, F, Dv+1])` of
  the keys before the first token (sequence.py)."""
  b, h, length, _ = x_q_BHLD.shape
  p = chunked.pad_inputs(x_q_BHLD, x_k_BHLD, v_BHLE, key_mask_BL, chunk_size)
  c, n = p.c, p.n
  keep_B1NC = p.keep_BNC[:, None]
  feature_fn = feature_maps.resolve(kernel, projection)
  qf_BHLF, _ = feature_fn(p.x_q)
  kf_BHLF, amp_BHL = feature_fn(p.x_k)
  amp = None if amp_BHL is None else chunked.to_chunks(amp_BHL, c)
  m0_BH, s0_BHFE = (None, None) if seed is None else seed
  terms = chunked.chunk_terms(
      chunked.to_chunks(qf_BHLF, c), chunked.to_chunks(kf_BHLF, c), amp,
      chunked.to_chunks(p.v, c), keep_B1NC,
      chunked.chunk_entry_max(amp, keep_B1NC, m0_BH))
  to_n = lambda x: jnp.moveaxis(x, 2, 0)  # [B, H, N, ...] -> [N, B, H, ...]
  prefix_NBHFE = _prefix_states(to_n(terms.summary), to_n(terms.decay),
                                s0_BHFE)
  num_BHNCE = chunked.attend(jnp.moveaxis(prefix_NBHFE, 0, 2), terms)
  num_BHLE = num_BHNCE.reshape(b, h, n * c, -1)[:, :, :length]
  return feature_maps.normalize(num_BHLE[..., :-1], num_BHLE[..., -1:],
                                signed_features=kernel == "softmax_trig")
