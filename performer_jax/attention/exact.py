"""Exact (quadratic) attention: the softmax baseline and L2 attention.

Both materialize the `[B, H, Lq, Lk]` logits, so memory is O(L^2). Logits,
softmax and the weighted sum run in float32 whatever the input dtype. The
public functions (api.py) check and flatten the inputs and restore the
caller's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import layout


def _visibility_mask(q_len: int, kv_len: int, key_mask_BK: jax.Array | None,
                     causal: bool, keep_self: bool,
                     q_offset: jax.Array | int | None = None
                     ) -> jax.Array | None:
  """Boolean `[B or 1, 1, Lq, Lk]` mask of which keys each query may see.

  Causal queries are aligned with the *end* of the keys, so query i sits at key
  position i + (Lk - Lq); this serves both self-attention and decoding with a
  prefix. `q_offset` (a traced integer allowed) replaces `Lk - Lq`: under a
  sharded sequence the local queries sit elsewhere among the gathered keys.
  """
  offset = kv_len - q_len if q_offset is None else q_offset
  q_pos = jnp.arange(q_len)[:, None] + offset
  k_pos = jnp.arange(kv_len)[None, :]
  mask = None
  if causal:
    mask = (k_pos <= q_pos)[None, None]
  if key_mask_BK is not None:
    km = key_mask_BK[:, None, None, :]
    mask = km if mask is None else (mask & km)
  if keep_self and mask is not None:
    mask = mask | (k_pos == q_pos)[None, None]
  return mask


def _attend(logits_BHQK: jax.Array, value_BKHD: jax.Array,
            mask: jax.Array | None) -> jax.Array:
  if mask is not None:
    # finfo.min rather than -inf keeps the softmax finite; a query that sees
    # no key at all gets all-zero weights (and output 0) instead of a uniform
    # average over padding.
    logits_BHQK = jnp.where(mask, logits_BHQK,
                            jnp.finfo(logits_BHQK.dtype).min)
  probs_BHQK = jax.nn.softmax(logits_BHQK, axis=-1)
  if mask is not None:
    probs_BHQK = jnp.where(mask, probs_BHQK, 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", probs_BHQK,
                    value_BKHD.astype(jnp.float32))


def softmax(flat: layout.Flat, *, causal: bool,
            q_offset: jax.Array | int | None = None) -> jax.Array:
  """Softmax attention on flattened inputs: float32 `[B, Lq, H, Dv]`.
  `q_offset`: the key position of query 0 (default `Lk - Lq`)."""
  q_f = flat.q_BLHD.astype(jnp.float32)
  k_f = flat.k_BSHD.astype(jnp.float32)
  logits_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_f, k_f) * (
      q_f.shape[-1] ** -0.5)
  mask = _visibility_mask(q_f.shape[1], k_f.shape[1], flat.key_mask_BS,
                          causal, keep_self=False, q_offset=q_offset)
  return _attend(logits_BHQK, flat.v_BSHD, mask)


def l2(flat: layout.Flat, *, causal: bool, keep_self: bool,
       q_offset: jax.Array | int | None = None) -> jax.Array:
  """L2 attention on flattened inputs: float32 `[B, Lq, H, Dv]`;
  `q_offset` as in `softmax`.

  The squared distance is expanded as `||q||^2 - 2 q.k + ||k||^2` so no
  `[Lq, Lk, D]` difference tensor is built. The `||q_i||^2` term is constant
  along each softmax row, so it is dropped: that changes no output and avoids
  cancelling two large numbers in float32. Padded keys were zeroed before
  (layout.flatten), so their contents cannot reach a real query; a padded
  query still attends to (its zeroed) self.
  """
  q_f = flat.q_BLHD.astype(jnp.float32)
  k_f = flat.k_BSHD.astype(jnp.float32)
  k_sq_BHK = jnp.einsum("bkhd,bkhd->bhk", k_f, k_f)
  qk_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_f, k_f)
  logits_BHQK = (2.0 * qk_BHQK - k_sq_BHK[:, :, None, :]) * (
      q_f.shape[-1] ** -0.5)
  mask = _visibility_mask(q_f.shape[1], k_f.shape[1], flat.key_mask_BS,
                          causal, keep_self=keep_self, q_offset=q_offset)
  return _attend(logits_BHQK, flat.v_BSHD, mask)
