"""Decoding: a constant-size state for FAVOR+, a KV cache otherwise.

The FAVOR+ state S = sum_j phi(k_j) [v_j, 1]^T is kept relative to the
running max of the key log-amplitudes; a token is a chunk of length 1 of the
chunked causal pass (chunked.chunk_terms), so decoding reproduces the full
forward pass. Several tokens (prefill, `favor_extend`) are one more segment,
as a device's block is under sequence parallelism: the outputs come from the
chunked pass seeded with the state, the new state is the seed joined with the
segment's summary (summary.py). `kv_extend` writes several keys and values
into a KV cache and attends causally at their positions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.attention import autodiff
from performer_jax.attention import chunked
from performer_jax.attention import cpu_kernel
from performer_jax.attention import exact
from performer_jax.attention import feature_maps
from performer_jax.attention import layout
from performer_jax.attention import pallas_favor
from performer_jax.attention import parallel
from performer_jax.attention import slim
from performer_jax.attention import summary

# The causal implementations that start from a seed state.
_SEEDED = {"slim": slim.causal, "parallel": parallel.causal,
           "autodiff": autodiff.causal, "pallas": parallel.causal}


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


def favor_extend(query_BLHD: jax.Array, key_BLHD: jax.Array,
                 value_BLHD: jax.Array, state: dict[str, jax.Array],
                 projection: jax.Array | None, *, kernel="softmax",
                 chunk_size: int = api.DEFAULT_CHUNK_SIZE,
                 implementation: str = "auto") -> tuple[jax.Array, dict]:
  """Advances the causal FAVOR+ state by L tokens in one pass.

  Equal, up to float32 rounding, to L calls of `favor_decode_step`, at the
  cost of one chunked causal pass.

  Args:
    query_BLHD, key_BLHD: `[B, L, H, D]`, the new tokens in order.
    value_BLHD: `[B, L, H, Dv]`.
    state: from `init_favor_state` or an earlier step.
    projection, kernel, chunk_size: as `favor_attention`.
    implementation: as `favor_attention`. The compiled CPU kernel ("kernel",
      and "auto" on the CPU) serves a prefill from the empty state; one that
      continues an earlier state runs "slim", which can start from it. The
      kernel's prefill is forward-only: differentiate with "slim".
      "pallas" computes outputs and the new state in kernels, features
      never stored, from any state; differentiable.

  Returns:
    (`[B, L, H, Dv]` outputs in the query's dtype, the new state).
  """
  proj = None if projection is None else projection.astype(jnp.float32)
  feature_fn = feature_maps.resolve(kernel, proj)
  impl = api.resolve_implementation(implementation, kernel, True, None)
  flat = layout.flatten(query_BLHD, key_BLHD, value_BLHD, None)
  x_q_BHLD, x_k_BHLD, v_BHLD = layout.favor_inputs(flat)
  has_amp = chunked.has_amplitude(kernel, proj, x_q_BHLD.shape[-1])
  seed = (state["max_amp"] if has_amp else None, state["sums"])
  v1_BHLE = layout.append_ones(v_BHLD)

  # "pallas" where it serves the call: outputs and the new state without
  # storing the features (pallas_favor.summarize).
  pallas_fn = None if impl != "pallas" else api.pallas_function(
      kernel, proj, x_q_BHLD.shape, x_k_BHLD.shape[2], v_BHLD.shape[-1],
      chunk_size, True, flat.dtype)

  def seeded():
    out_BHLD = (pallas_fn or _SEEDED.get(impl, slim.causal))(
        x_q_BHLD, x_k_BHLD, v_BHLD, None, proj, kernel=kernel,
        chunk_size=chunk_size, seed=seed)
    if pallas_fn is not None:
      keys = pallas_favor.summarize(
          x_k_BHLD, v_BHLD, None, proj, kernel=kernel, chunk_size=chunk_size,
          dtype=pallas_favor.matmul_dtype(flat.dtype))
    else:
      kf_BHLF, amp_BHL = feature_fn(x_k_BHLD)
      keys = summary.summarize(kf_BHLF, amp_BHL, v1_BHLE, None)
    m_BH, sums_BHFE = summary.combine(seed, keys)
    return out_BHLD, m_BH, sums_BHFE

  if impl == "kernel":
    # The compiled kernel starts from an empty state only. A prompt that
    # starts its sequence (the usual prefill) has one: with zero sums the
    # seed adds nothing to numerator or normalizer, so the unseeded pass is
    # the same function, and the kernel returns the state it ends with. On
    # the CPU `cond` runs only the branch it takes.
    out_BHLD, m_BH, sums_BHFE = jax.lax.cond(
        jnp.all(state["sums"] == 0),
        functools.partial(cpu_kernel.causal_from_empty, x_q_BHLD, x_k_BHLD,
                          v_BHLD, proj, kernel=kernel, chunk_size=chunk_size),
        seeded)
  else:
    out_BHLD, m_BH, sums_BHFE = seeded()
  new_state = {"sums": sums_BHFE,
               "max_amp": state["max_amp"] if m_BH is None else m_BH}
  return layout.restore(jnp.swapaxes(out_BHLD, 1, 2), flat), new_state


def kv_extend(query_BLHD: jax.Array, key_BLHD: jax.Array,
              value_BLHD: jax.Array, cached_key_BTHD: jax.Array,
              cached_value_BTHD: jax.Array, index: jax.Array, *,
              kind: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Writes L tokens into a KV cache at positions `index..index+L-1` and
  attends causally from them (`kind` "softmax" or "l2").

  Args:
    query_BLHD, key_BLHD, value_BLHD: the new tokens.
    cached_key_BTHD, cached_value_BTHD: the caches, T >= index + L.
    index: int32 scalar, the position of the first new token.

  Returns:
    (`[B, L, H, Dv]` outputs in the query's dtype, the updated caches).
  """
  start = (0, index, 0, 0)
  cached_k = jax.lax.dynamic_update_slice(
      cached_key_BTHD, key_BLHD.astype(cached_key_BTHD.dtype), start)
  cached_v = jax.lax.dynamic_update_slice(
      cached_value_BTHD, value_BLHD.astype(cached_value_BTHD.dtype), start)
  flat = layout.flatten(query_BLHD, cached_k, cached_v, None)
  # Causal at the tokens' own positions: cache slots past them stay unseen.
  if kind == "softmax":
    out = exact.softmax(flat, causal=True, q_offset=index)
  else:
    out = exact.l2(flat, causal=True, keep_self=True, q_offset=index)
  return layout.restore(out, flat), cached_k, cached_v
