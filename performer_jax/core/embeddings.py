"""Token and position embeddings, written once for Linen and NNX.

The token table is tied: it embeds the inputs and, transposed, gives the
output logits (as the Performer and Flax LM1B models do). Initializers and
logical axes of the tables are here so that both APIs draw the same values.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from performer_jax.schemas.sections import POSEMB_KINDS

Dtype = jnp.dtype
TOKEN_INIT = nn.initializers.normal(stddev=1.0)
TOKEN_AXES = ("vocab", "embed")
POSITION_INIT = nn.initializers.normal(stddev=0.02)
POSITION_AXES = (None, "embed")


def embed_tokens(table_VD: jax.Array, inputs_BL: jax.Array,
                 dtype: Dtype) -> jax.Array:
  """int32 [B, L] token ids -> [B, L, D] rows of the table, in `dtype`."""
  return jnp.take(table_VD, inputs_BL, axis=0).astype(dtype)


def tied_logits(table_VD: jax.Array, x_BLD: jax.Array,
                dtype: Dtype) -> jax.Array:
  """[B, L, D] features -> float32 [B, L, V] logits against the table."""
  emb_VD = table_VD.astype(dtype)
  logits_BLV = jnp.einsum("bld,vd->blv", x_BLD.astype(dtype), emb_VD,
                          preferred_element_type=jnp.float32)
  return logits_BLV * (table_VD.shape[-1] ** -0.5)


def check_posemb(posemb: str) -> None:
  if posemb not in POSEMB_KINDS:
    raise ValueError(f"posemb must be one of {POSEMB_KINDS}, got "
                     f"{posemb!r}")


def add_positions(x_BLD: jax.Array, table_LD: jax.Array,
                  index: jax.Array | None = None) -> jax.Array:
  """Adds position codes: rows 0..L-1 of the `[max_len, D]` table, or, when
  decoding, rows `index..index+L-1` (one token, or a prompt's prefill)."""
  length = x_BLD.shape[1]
  if length > table_LD.shape[0]:
    raise ValueError(f"input length {length} exceeds model.max_len "
                     f"{table_LD.shape[0]}; raise max_len in the model config")
  if index is not None:
    pos_LD = jax.lax.dynamic_slice_in_dim(table_LD, index, length, axis=0)
    return x_BLD + pos_LD[None].astype(x_BLD.dtype)
  return x_BLD + table_LD[None, :length].astype(x_BLD.dtype)


def sinusoidal_table(max_len: int, emb_dim: int) -> np.ndarray:
  """float32 [max_len, D]: sin on the first half of the features, cos on the
  second, with timescales from 1 to 10^4 (Vaswani et al. 2017)."""
  half = emb_dim // 2
  timescales_F = 1e4 ** (-np.arange(half, dtype=np.float64) / max(half, 1))
  angles_LF = np.arange(max_len, dtype=np.float64)[:, None] * timescales_F
  table = np.zeros((max_len, emb_dim), dtype=np.float32)
  table[:, :half] = np.sin(angles_LF)
  table[:, half:2 * half] = np.cos(angles_LF)
  return table
