"""Exact (quadratic) attention: the softmax baseline and L2 attention.

Both materialize the `[B, H, Lq, Lk]` logits, so memory is O(L^2). Logits,
softmax and the weighted sum run in float32 whatever the input dtype; the
output has the inputs' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from performer_jax.attention import shapes


def _visibility_mask(q_len: int, kv_len: int, key_mask_BK: jax.Array | None,
                     causal: bool, keep_self: bool) -> jax.Array | None:
  """Boolean `[B or 1, 1, Lq, Lk]` mask of which keys each query may see.

  Causal queries are aligned with the *end* of the keys, so query i sits at key
  position i + (Lk - Lq); this serves both self-attention and decoding with a
  prefix.
  """
  offset = kv_len - q_len
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


def softmax_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                      causal: bool = False,
                      key_mask: jax.Array | None = None) -> jax.Array:
  """Exact softmax attention with logits `q.k / sqrt(head_dim)`.

  Args:
    query: `[batch..., Lq, H, D]`.
    key: `[batch..., Lk, H, D]`.
    value: `[batch..., Lk, H, Dv]`.
    causal: query i attends to keys j <= i + (Lk - Lq).
    key_mask: bool `[batch..., Lk]`, True = attend. Padded keys are removed
      whatever they contain; a query with no visible key outputs zeros.

  Returns:
    `[batch..., Lq, H, Dv]` in the inputs' dtype.
  """
  shapes.check_qkv(query, key, value, key_mask, name="softmax_attention")
  out_dtype = shapes.output_dtype(query, value)
  q_BQHD, batch_shape = shapes.flatten_batch(query, 3)
  k_BKHD, _ = shapes.flatten_batch(key, 3)
  v_BKHD, _ = shapes.flatten_batch(value, 3)
  km_BK = None if key_mask is None else shapes.flatten_batch(key_mask, 1)[0]
  k_BKHD = shapes.sanitize_padding(k_BKHD, km_BK)
  v_BKHD = shapes.sanitize_padding(v_BKHD, km_BK)
  scale = query.shape[-1] ** -0.5
  logits_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BQHD.astype(jnp.float32),
                           k_BKHD.astype(jnp.float32)) * scale
  mask = _visibility_mask(q_BQHD.shape[1], k_BKHD.shape[1], km_BK, causal,
                          keep_self=False)
  out_BQHD = _attend(logits_BHQK, v_BKHD, mask)
  return out_BQHD.reshape(batch_shape + out_BQHD.shape[1:]).astype(out_dtype)


def l2_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                 causal: bool = False,
                 key_mask: jax.Array | None = None,
                 keep_self: bool = True) -> jax.Array:
  """Exact L2 attention (Kim et al. 2021): logits `-||q_i - k_j||^2 / sqrt(D)`.

  The squared distance is expanded as `||q||^2 - 2 q.k + ||k||^2` so no
  `[Lq, Lk, D]` difference tensor is built. The `||q_i||^2` term is constant
  along each softmax row, so it is dropped: that changes no output and avoids
  cancelling two large numbers in float32.

  A query's attention to its own position (key position i + Lk - Lq) is never
  masked out, neither by `causal` nor by `key_mask`, as in the paper; this also
  means no query is ever left with an empty set of keys.

  Args and returns as `softmax_attention`, plus `keep_self`: set it False
  only when the caller's key_mask already covers the query's own position
  (token-by-token decoding against a key cache does this).
  """
  shapes.check_qkv(query, key, value, key_mask, name="l2_attention")
  out_dtype = shapes.output_dtype(query, value)
  q_BQHD, batch_shape = shapes.flatten_batch(query, 3)
  k_BKHD, _ = shapes.flatten_batch(key, 3)
  v_BKHD, _ = shapes.flatten_batch(value, 3)
  km_BK = None if key_mask is None else shapes.flatten_batch(key_mask, 1)[0]
  q_len, kv_len = q_BQHD.shape[1], k_BKHD.shape[1]
  # Padded keys are zeroed before use so their contents cannot reach a real
  # query; a padded query still attends to (its zeroed) self.
  k_BKHD = shapes.sanitize_padding(k_BKHD, km_BK)
  v_BKHD = shapes.sanitize_padding(v_BKHD, km_BK)
  q_f = q_BQHD.astype(jnp.float32)
  k_f = k_BKHD.astype(jnp.float32)
  k_sq_BHK = jnp.einsum("bkhd,bkhd->bhk", k_f, k_f)
  qk_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_f, k_f)
  logits_BHQK = (2.0 * qk_BHQK - k_sq_BHK[:, :, None, :]) * (
      query.shape[-1] ** -0.5)
  mask = _visibility_mask(q_len, kv_len, km_BK, causal, keep_self=keep_self)
  out_BQHD = _attend(logits_BHQK, v_BKHD, mask)
  return out_BQHD.reshape(batch_shape + out_BQHD.shape[1:]).astype(out_dtype)
