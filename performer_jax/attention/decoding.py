"""One-token decoding steps: O(1) per token for FAVOR+, a KV cache otherwise.

Causal FAVOR+ is a linear recurrence: with S = sum_j phi(k_j) [v_j, 1]^T the
output for a new token is phi(q)^T S normalized by its last column. The state
is kept relative to a running max of the key log-amplitudes, and each token
is one chunk of length 1 of the chunked causal pass (chunked.chunk_terms), so
decoding reproduces the full forward pass with the same stabilizer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked
from performer_jax.attention import feature_maps
from performer_jax.attention import layout


def init_favor_state(batch: int, heads: int, num_features: int,
                     value_dim: int) -> dict[str, jax.Array]:
  """Zero state: `sums [B, H, F, Dv+1]` float32, `max_amp [B, H]` (-inf)."""
  sums, max_amp = chunked.initial_state(batch, heads, num_features,
                                       value_dim + 1)
  return {"sums": sums, "max_amp": max_amp}


def favor_decode_step(query_BHD: jax.Array, key_BHD: jax.Array,
                      value_BHD: jax.Array, state: dict[str, jax.Array],
                      projection: jax.Array | None, *,
                      kernel="softmax") -> tuple[jax.Array, dict]:
  """Advances the causal FAVOR+ state by one token and attends with it.

  Args:
    query_BHD, key_BHD: `[B, H, D]` for the new token.
    value_BHD: `[B, H, Dv]`.
    state: from `init_favor_state` or a previous step.
    projection: `[F, D]` (or None for deterministic relu / user kernels).
    kernel: as `favor_attention`.

  Returns:
    (`[B, H, Dv]` output in the query's dtype, the new state).
  """
  proj = None if projection is None else projection.astype(jnp.float32)
  feature_fn = feature_maps.resolve(kernel, proj)
  scale = query_BHD.shape[-1] ** -0.25
  # One chunk of one token: the same step as every causal pass.
  qf_BH1F, _ = feature_fn(query_BHD[:, :, None].astype(jnp.float32) * scale)
  kf_BH1F, amp_BH1 = feature_fn(key_BHD[:, :, None].astype(jnp.float32)
                                * scale)
  v_BH1E = layout.append_ones(value_BHD[:, :, None].astype(jnp.float32))
  terms = chunked.chunk_terms(qf_BH1F, kf_BH1F, amp_BH1, v_BH1E,
                              jnp.ones((1, 1), bool), state["max_amp"])
  out_BHE = chunked.attend(state["sums"], terms)[:, :, 0]
  out_BHD = feature_maps.normalize(out_BHE[..., :-1], out_BHE[..., -1:],
                                   signed_features=kernel == "softmax_trig")
  new_state = {"sums": chunked.carry(state["sums"], terms),
               "max_amp": terms.m_out}
  return out_BHD.astype(query_BHD.dtype), new_state
