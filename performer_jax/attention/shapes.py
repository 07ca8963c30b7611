"""Shape validation and batch flattening shared by every attention function.

All attention functions take Flax-layout tensors: query `[batch..., Lq, H, D]`,
key `[batch..., Lk, H, D]`, value `[batch..., Lk, H, Dv]` and an optional
boolean key mask `[batch..., Lk]` (True = attend). Errors name the argument and
the expected shape so a caller can fix the call rather than debug a NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def check_qkv(query: jax.Array, key: jax.Array, value: jax.Array,
              key_mask: jax.Array | None, *, name: str) -> None:
  """Raises ValueError when the shapes of an attention call are inconsistent."""
  for arg_name, arr in (("query", query), ("key", key), ("value", value)):
    if arr.ndim < 3:
      raise ValueError(
          f"{name}: {arg_name} must have shape [batch..., length, heads, "
          f"head_dim], got shape {arr.shape}.")
  if query.ndim != key.ndim or key.ndim != value.ndim:
    raise ValueError(
        f"{name}: query, key and value must have the same rank, got shapes "
        f"{query.shape}, {key.shape}, {value.shape}.")
  if key.shape[:-1] != value.shape[:-1]:
    raise ValueError(
        f"{name}: key and value must agree on [batch..., kv_len, heads], got "
        f"key {key.shape} and value {value.shape}.")
  if query.shape[:-3] != key.shape[:-3] or query.shape[-2] != key.shape[-2]:
    raise ValueError(
        f"{name}: query and key must agree on batch dims and heads, got query "
        f"{query.shape} and key {key.shape}.")
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(
        f"{name}: query and key head_dim differ: {query.shape[-1]} vs "
        f"{key.shape[-1]}.")
  if key_mask is not None:
    expected = key.shape[:-2]
    if tuple(key_mask.shape) != tuple(expected):
      raise ValueError(
          f"{name}: key_mask must have shape [batch..., kv_len] = {expected} "
          f"(True = attend), got {tuple(key_mask.shape)}. For a Flax-style "
          "[batch, heads, q_len, kv_len] mask use "
          "performer_jax.nn.make_favor_attention_fn.")
    if key_mask.dtype != jnp.bool_:
      raise ValueError(
          f"{name}: key_mask must be boolean (True = attend), got dtype "
          f"{key_mask.dtype}. Convert with `mask.astype(bool)`.")


def flatten_batch(x: jax.Array, trailing: int) -> tuple[jax.Array, tuple]:
  """Reshapes `[batch..., *trailing_dims]` to `[B, *trailing_dims]`."""
  batch_shape = x.shape[:x.ndim - trailing]
  flat = x.reshape((math.prod(batch_shape),) + x.shape[x.ndim - trailing:])
  return flat, batch_shape


def sanitize_padding(x_BLHD: jax.Array,
                     key_mask_BL: jax.Array | None) -> jax.Array:
  """Zeroes padded positions so their contents (even inf/NaN) cannot leak.

  Zeroing before any arithmetic, instead of masking afterwards, also keeps the
  gradients at padded positions exactly zero rather than 0 * NaN.
  """
  if key_mask_BL is None:
    return x_BLHD
  return jnp.where(key_mask_BL[:, :, None, None], x_BLHD, 0)


def output_dtype(query: jax.Array, value: jax.Array):
  return jnp.result_type(query.dtype, value.dtype)
