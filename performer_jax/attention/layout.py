"""Input layout shared by every attention implementation.

Public functions take Flax-layout tensors: query `[batch..., Lq, H, D]`, key
`[batch..., Lk, H, D]`, value `[batch..., Lk, H, Dv]` and an optional boolean
key mask `[batch..., Lk]` (True = attend). Before any implementation runs,
the batch dimensions are flattened to one, padded keys and values are zeroed,
and FAVOR+ inputs are moved to the heads-major float32 layout `[B, H, L, D]`
with the data normalizer `D^(-1/4)` applied. Every implementation then works
on the same prepared tensors, and `restore` brings back the caller's layout
and dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


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


class Flat(NamedTuple):
  """Flattened, sanitized inputs of one attention call.

  q_BLHD, k_BSHD, v_BSHD: the caller's dtype, batch flattened to B; padded
    keys and values zeroed, and padded queries when a query mask is given.
  key_mask_BS: bool or None.
  query_mask_BL: bool or None.
  batch_shape: the caller's batch dimensions, brought back by `restore`.
  dtype: the output dtype.
  """
  q_BLHD: jax.Array
  k_BSHD: jax.Array
  v_BSHD: jax.Array
  key_mask_BS: jax.Array | None
  query_mask_BL: jax.Array | None
  batch_shape: tuple
  dtype: object


def flatten(query: jax.Array, key: jax.Array, value: jax.Array,
            key_mask: jax.Array | None,
            query_mask: jax.Array | None = None) -> Flat:
  """Flattens the batch dimensions and zeroes padded keys, values and
  queries."""
  q_BLHD, batch_shape = flatten_batch(query, 3)
  k_BSHD, _ = flatten_batch(key, 3)
  v_BSHD, _ = flatten_batch(value, 3)
  km_BS = None if key_mask is None else flatten_batch(key_mask, 1)[0]
  qm_BL = None if query_mask is None else flatten_batch(query_mask, 1)[0]
  return Flat(sanitize_padding(q_BLHD, qm_BL), sanitize_padding(k_BSHD, km_BS),
              sanitize_padding(v_BSHD, km_BS), km_BS, qm_BL, batch_shape,
              output_dtype(query, value))


def heads_major(x_BLHD: jax.Array) -> jax.Array:
  """`[B, L, H, D]` -> float32 `[B, H, L, D]`.

  Heads-major layout: (b, h) lead every einsum as batch dimensions, so XLA
  runs plain batched matmuls instead of transposing the `[L, F]` feature
  tensors around each product (docs/benchmarks.md, "Figures behind design
  choices"); only the narrow D-wide inputs are transposed, once.
  """
  return jnp.swapaxes(x_BLHD.astype(jnp.float32), 1, 2)


def favor_inputs(flat: Flat) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Heads-major float32 `(x_q [B,H,L,D], x_k [B,H,S,D], v [B,H,S,Dv])`,
  queries and keys multiplied by the data normalizer `D^(-1/4)`, so that
  `exp(x_q . x_k)` is the softmax kernel `exp(q . k / sqrt(D))`."""
  scale = flat.q_BLHD.shape[-1] ** -0.25
  return (heads_major(flat.q_BLHD) * scale, heads_major(flat.k_BSHD) * scale,
          heads_major(flat.v_BSHD))


def append_ones(v_BHSE: jax.Array) -> jax.Array:
  """`[..., Dv]` -> `[..., Dv + 1]`: the ones column makes the normalizer a
  by-product of the numerator's matmuls."""
  ones = jnp.ones(v_BHSE.shape[:-1] + (1,), v_BHSE.dtype)
  return jnp.concatenate([v_BHSE, ones], axis=-1)


def restore(out_BLHD: jax.Array, flat: Flat) -> jax.Array:
  """`[B, L, H, Dv]` -> `[batch..., L, H, Dv]` in `flat.dtype`, zero at
  padded queries (so nothing flows back through them either)."""
  out_BLHD = sanitize_padding(out_BLHD, flat.query_mask_BL)
  return out_BLHD.reshape(flat.batch_shape + out_BLHD.shape[1:]).astype(
      flat.dtype)
