"""Token and positional embeddings.

The token embedding is tied: the same `[vocab, embed]` table embeds the inputs
and, transposed, produces the output logits. Tying halves the embedding
parameters (the protein vocabulary is tiny, but byte/char LMs are not) and is
what the Performer and Flax LM1B reference models do.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from performer_jax.config.sections import POSEMB_KINDS
from performer_jax.nn import core

Dtype = jnp.dtype
# Initializers and logical axes of the two tables (the NNX modules use them
# too, see performer_jax.nnx.transformer).
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


class TiedEmbedding(nn.Module):
  """Token embedding shared between the input and the output layer.

  The table is initialized N(0, 1) so embedded tokens have unit-scale entries
  like the sinusoidal position codes; `attend` divides by sqrt(emb_dim) so
  logits computed from unit-variance (layer-normed) features start at unit
  scale too.

  Attributes:
    vocab_size: number of token ids.
    emb_dim: embedding width D.
    dtype: compute dtype of the embedded activations.
    param_dtype: dtype of the table.
  """
  vocab_size: int
  emb_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding_VD = self.param(
        "embedding", core.logical_init(TOKEN_INIT, TOKEN_AXES),
        (self.vocab_size, self.emb_dim), self.param_dtype)

  def __call__(self, inputs_BL: jax.Array) -> jax.Array:
    """int32 [B, L] token ids -> [B, L, D] in `dtype`."""
    return embed_tokens(self.embedding_VD, inputs_BL, self.dtype)

  def attend(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] features -> float32 [B, L, V] logits."""
    return tied_logits(self.embedding_VD, x_BLD, self.dtype)


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


class PositionEmbedding(nn.Module):
  """Adds absolute position codes ("learned" or "sinusoidal").

  In decode mode the module is fed one token at a time and reads its position
  from `cache_index` in the "cache" collection, which it advances on every
  call (but not during `init`, which only sizes the cache).

  Attributes:
    max_len: number of positions.
    emb_dim: embedding width D.
    posemb: "learned" or "sinusoidal".
    decode: True for one-token-at-a-time decoding.
    param_dtype: dtype of the learned table.
  """
  max_len: int
  emb_dim: int
  posemb: str = "learned"
  decode: bool = False
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, L, D], same dtype; L must be <= max_len (1 when
    decoding)."""
    check_posemb(self.posemb)
    if self.posemb == "learned":
      table_LD = self.param(
          "pos_embedding", core.logical_init(POSITION_INIT, POSITION_AXES),
          (self.max_len, self.emb_dim), self.param_dtype)
    else:
      table_LD = jnp.asarray(sinusoidal_table(self.max_len, self.emb_dim))

    if self.decode:
      is_initialized = self.has_variable("cache", "cache_index")
      cache_index = self.variable("cache", "cache_index",
                                  lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        index = cache_index.value
        cache_index.value = index + x_BLD.shape[1]
        return add_positions(x_BLD, table_LD, index)
    return add_positions(x_BLD, table_LD)
