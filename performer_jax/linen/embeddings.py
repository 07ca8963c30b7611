"""The Linen token and position embeddings (`core.embeddings` has the math)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.core import embeddings as core
from performer_jax.core.sharding import logical_init


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
  dtype: core.Dtype = jnp.float32
  param_dtype: core.Dtype = jnp.float32

  def setup(self):
    self.embedding_VD = self.param(
        "embedding", logical_init(core.TOKEN_INIT, core.TOKEN_AXES),
        (self.vocab_size, self.emb_dim), self.param_dtype)

  def __call__(self, inputs_BL: jax.Array) -> jax.Array:
    """int32 [B, L] token ids -> [B, L, D] in `dtype`."""
    return core.embed_tokens(self.embedding_VD, inputs_BL, self.dtype)

  def attend(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] features -> float32 [B, L, V] logits."""
    return core.tied_logits(self.embedding_VD, x_BLD, self.dtype)


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
  param_dtype: core.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, L, D], same dtype; L must be <= max_len (1 when
    decoding)."""
    core.check_posemb(self.posemb)
    if self.posemb == "learned":
      table_LD = self.param(
          "pos_embedding", logical_init(core.POSITION_INIT, core.POSITION_AXES),
          (self.max_len, self.emb_dim), self.param_dtype)
    else:
      table_LD = jnp.asarray(core.sinusoidal_table(self.max_len, self.emb_dim))

    if self.decode:
      is_initialized = self.has_variable("cache", "cache_index")
      cache_index = self.variable("cache", "cache_index",
                                  lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        index = cache_index.value
        cache_index.value = index + x_BLD.shape[1]
        return core.add_positions(x_BLD, table_LD, index)
    return core.add_positions(x_BLD, table_LD)
