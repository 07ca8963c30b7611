"""One-token decoding steps: O(1) per token for FAVOR+, a KV cache otherwise.

Causal FAVOR+ is a linear recurrence: with S = sum_j phi(k_j) [v_j, 1]^T the
output for a new token is phi(q)^T S normalized by its last column. The state
is kept relative to a running max of the key log-amplitudes (the same
stabilizer as the chunked causal path in favor.py), so every factor applied to
it is <= 1 and decoding reproduces the full forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import feature_maps


def init_favor_state(batch: int, heads: int, num_features: int,
                     value_dim: int) -> dict[str, jax.Array]:
  """Zero state: `sums [B, H, F, Dv+1]` float32, `max_amp [B, H]` (-inf)."""
  return {
      "sums": jnp.zeros((batch, heads, num_features, value_dim + 1),
                        jnp.float32),
      "max_amp": jnp.full((batch, heads), -jnp.inf, jnp.float32),
  }


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
  qf_BHF, _ = feature_fn(query_BHD.astype(jnp.float32) * scale)
  kf_BHF, amp_BH = feature_fn(key_BHD.astype(jnp.float32) * scale)
  v_BHE = jnp.concatenate(
      [value_BHD.astype(jnp.float32),
       jnp.ones(value_BHD.shape[:-1] + (1,), jnp.float32)], axis=-1)
  sums, max_amp = state["sums"], state["max_amp"]
  if amp_BH is not None:
    new_max = jnp.maximum(max_amp, amp_BH)
    # exp(-inf) = 0 drops the (all-zero) initial state on the first token.
    sums = sums * jnp.exp(max_amp - new_max)[..., None, None]
    kf_BHF = kf_BHF * jnp.exp(amp_BH - new_max)[..., None]
    max_amp = new_max
  sums = sums + jnp.einsum("bhf,bhe->bhfe", kf_BHF, v_BHE)
  out_BHE = jnp.einsum("bhf,bhfe->bhe", qf_BHF, sums)
  out_BHD = feature_maps.normalize(out_BHE[..., :-1], out_BHE[..., -1:],
                            signed_features=kernel == "softmax_trig")
  return out_BHD.astype(query_BHD.dtype), {"sums": sums, "max_amp": max_amp}
