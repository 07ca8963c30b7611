"""The encoder and decoder-only `Transformer` for Flax NNX.

The Linen model's structure (`core.transformer.forward`) over NNX layers,
with the Linen state's names and shapes, so `convert.py` maps one onto the
other leaf by leaf. `scan_layers` stacks the blocks along a leading "layers"
axis (`nnx.vmap`, `nnx.scan`); `remat` rematerializes each.
  model = pnnx.make_model(config.model, vocab_size=V, causal=True,
                          rngs=nnx.Rngs(0))
  logits_BLV = model(tokens_BL)
  model.eval(); model.set_attributes(decode=True)      # switch to decoding
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from performer_jax.core import embeddings
from performer_jax.core import transformer
from performer_jax.core.attention import check_decode
from performer_jax.core.sharding import nnx_sharding
from performer_jax.core.sharding import product_sharding
from performer_jax.nnx.attention import make_dropout
from performer_jax.nnx.attention import MultiHeadAttention
from performer_jax.schemas.sections import ModelConfig


def _layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      cfg.emb_dim, epsilon=cfg.ln_epsilon, dtype=cfg.compute_dtype,
      param_dtype=cfg.storage_dtype,
      scale_metadata=nnx_sharding(transformer.LN_AXES),
      bias_metadata=nnx_sharding(transformer.LN_AXES), rngs=rngs)


def _linear(cfg: ModelConfig, name: str, in_features: int,
            out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  axes = transformer.MLP_AXES[name]
  return nnx.Linear(
      in_features, out_features, dtype=cfg.compute_dtype,
      param_dtype=cfg.storage_dtype,
      kernel_init=nnx.initializers.xavier_uniform(),
      bias_init=nnx.initializers.zeros_init(),
      kernel_metadata=nnx_sharding(axes),
      bias_metadata=nnx_sharding(axes[1:]), rngs=rngs)


class TiedEmbedding(nnx.Module):
  """`[vocab, emb_dim]` table that embeds tokens and, transposed, gives the
  logits (see core/embeddings.py)."""

  def __init__(self, vocab_size: int, emb_dim: int, *, dtype: Any,
               param_dtype: Any, rngs: nnx.Rngs):
    self.embedding = nnx.Param(
        embeddings.TOKEN_INIT(rngs.params(), (vocab_size, emb_dim),
                              param_dtype),
        **nnx_sharding(embeddings.TOKEN_AXES))
    self.dtype = dtype

  def __call__(self, inputs_BL: jax.Array) -> jax.Array:
    """int32 [B, L] token ids -> [B, L, D] in `dtype`."""
    return embeddings.embed_tokens(self.embedding[...], inputs_BL, self.dtype)

  def attend(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] features -> float32 [B, L, V] logits."""
    return embeddings.tied_logits(self.embedding[...], x_BLD, self.dtype)


class PositionEmbedding(nnx.Module):
  """Adds "learned" or "sinusoidal" position codes; when decoding, the code
  of `cache_index` (an nnx.Cache from `init_cache`), which every call
  advances."""

  def __init__(self, max_len: int, emb_dim: int, *, posemb: str,
               decode: bool, param_dtype: Any, rngs: nnx.Rngs):
    embeddings.check_posemb(posemb)
    self.max_len, self.emb_dim, self.decode = max_len, emb_dim, decode
    self.pos_embedding = (
        nnx.Param(embeddings.POSITION_INIT(rngs.params(), (max_len, emb_dim),
                                           param_dtype),
                  **nnx_sharding(embeddings.POSITION_AXES))
        if posemb == "learned" else nnx.data(None))

  def init_cache(self) -> None:
    self.cache_index = nnx.Cache(jnp.zeros((), jnp.int32))

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, L, D], same dtype (L == 1 when decoding)."""
    if self.pos_embedding is None:
      table_LD = jnp.asarray(embeddings.sinusoidal_table(self.max_len,
                                                         self.emb_dim))
    else:
      table_LD = self.pos_embedding[...]
    if not self.decode:
      return embeddings.add_positions(x_BLD, table_LD)
    if not hasattr(self, "cache_index"):
      raise ValueError("decode=True needs a cache: call "
                       "init_cache(batch_size, max_len) first.")
    index = self.cache_index[...]
    self.cache_index[...] = index + x_BLD.shape[1]
    return embeddings.add_positions(x_BLD, table_LD, index)


class TokenTypeEmbedding(nnx.Module):
  """`[token_types, D]` table; adds row 0 (`transformer.add_token_type`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embedding = nnx.Param(
        embeddings.POSITION_INIT(rngs.params(),
                                 (cfg.token_types, cfg.emb_dim),
                                 cfg.storage_dtype),
        **nnx_sharding(transformer.TYPE_AXES))

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    return transformer.add_token_type(x_BLD, self.embedding[...])


class MlpBlock(nnx.Module):
  """[B, L, D] -> [B, L, D]: Linear(mlp_dim) -> gelu -> Linear(emb_dim)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.wi = _linear(cfg, "wi", cfg.emb_dim, cfg.mlp_dim, rngs)
    self.wo = _linear(cfg, "wo", cfg.mlp_dim, cfg.emb_dim, rngs)
    self.activation = cfg.activation

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    return transformer.mlp(x_BLD, self._product(self.wi),
                           self._product(self.wo),
                           transformer.ACTIVATIONS[self.activation])

  @staticmethod
  def _product(linear: nnx.Linear):
    # An explicit mesh needs wo's output sharding (its "mlp" input axis is
    # sharded); see core.sharding.product_sharding.
    return lambda x: linear(x, out_sharding=product_sharding(
        x, linear.kernel[...], 1))


class TransformerBlock(nnx.Module):
  """One pre-LN block (`core.transformer.residual_block`)."""

  def __init__(self, cfg: ModelConfig, causal: bool, decode: bool, *,
               rngs: nnx.Rngs):
    self.ln_attention = _layer_norm(cfg, rngs)
    self.attention = MultiHeadAttention(
        cfg.emb_dim, cfg.num_heads, cfg.attention, causal=causal,
        dropout_rate=0.0, dtype=cfg.compute_dtype,
        param_dtype=cfg.storage_dtype, decode=decode, rngs=rngs)
    self.ln_mlp = _layer_norm(cfg, rngs)
    self.mlp = MlpBlock(cfg, rngs=rngs)
    self.dropout = make_dropout(cfg.dropout_rate, rngs)
    self.norm = cfg.norm

  def __call__(self, x_BLD: jax.Array, key_mask_BL: jax.Array | None,
               deterministic: bool | None) -> jax.Array:
    return transformer.residual_block(
        x_BLD, key_mask_BL, deterministic, ln_attention=self.ln_attention,
        attention=self.attention, ln_mlp=self.ln_mlp, mlp_block=self.mlp,
        dropout=self.dropout, norm=self.norm)


def _stacked_blocks(cfg: ModelConfig, causal: bool, decode: bool,
                    rngs: nnx.Rngs) -> TransformerBlock:
  """`num_layers` blocks as one, every variable stacked along axis 0 (and
  "layers" prepended to the logical axes, as `nn.scan` does in Linen)."""
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0,
            transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(rngs):
    return TransformerBlock(cfg, causal, decode, rngs=rngs)
  return create(rngs)


class Transformer(nnx.Module):
  """Encoder (`causal=False`) or decoder-only (`causal=True`) language model.

  Args:
    config: the model section (config.sections.ModelConfig).
    vocab_size: number of token ids (input and output).
    causal: decoder-only (causal LM) if True, else encoder (masked LM).
    decode: one token per call on the cache of `init_cache` (causal only).
      An attribute: `model.set_attributes(decode=True)` switches a trained
      model to decoding, with the same variables.
    rngs: streams "params", "random_features" (default: "params") and
      "dropout" (default: forked from "params").

  State: nnx.Param (Linen's "params"), RandomFeatures (FAVOR+ with a
  projection, one per layer: Linen's "random_features"), nnx.Cache after
  `init_cache` (Linen's "cache"), and the dropout streams (nnx.RngState).
  Dropout is on in training mode (the NNX default); `model.eval()` turns it
  off.
  """

  def __init__(self, config: ModelConfig, vocab_size: int, causal: bool,
               decode: bool = False, *, rngs: nnx.Rngs):
    cfg = config
    self.config, self.vocab_size = cfg, vocab_size
    self.causal, self.decode = causal, decode
    self.token_embed = TiedEmbedding(
        vocab_size, cfg.emb_dim, dtype=cfg.compute_dtype,
        param_dtype=cfg.storage_dtype, rngs=rngs)
    self.pos_embed = PositionEmbedding(
        cfg.max_len, cfg.emb_dim, posemb=cfg.posemb, decode=decode,
        param_dtype=cfg.storage_dtype, rngs=rngs)
    self.dropout = make_dropout(cfg.dropout_rate, rngs)
    if cfg.token_types:
      self.type_embed = TokenTypeEmbedding(cfg, rngs=rngs)
    if cfg.embedding_norm:
      self.ln_embed = _layer_norm(cfg, rngs)
    if cfg.scan_layers:
      self.layers = _stacked_blocks(cfg, causal, decode, rngs)
    else:
      for i in range(cfg.num_layers):
        setattr(self, f"layer_{i}",
                TransformerBlock(cfg, causal, decode, rngs=rngs))
    if cfg.norm == "pre":  # post-LN blocks end normalized
      self.ln_final = _layer_norm(cfg, rngs)

  def __call__(self, inputs_BL: jax.Array, *,
               key_mask_BL: jax.Array | None = None,
               deterministic: bool | None = None) -> jax.Array:
    """Token ids -> next-token (causal) or token (masked LM) logits.

    Args:
      inputs_BL: int32 [B, L] token ids; L <= max_len, and L == 1 when
        decoding.
      key_mask_BL: optional bool [B, L], True at real tokens; padded keys
        are excluded from every query's attention.
      deterministic: True disables dropout; None: the model's mode
        (`train()`/`eval()`).

    Returns:
      float32 [B, L, vocab_size] logits.
    """
    check_decode(self.decode, self.causal)
    return transformer.forward(
        inputs_BL, key_mask_BL, deterministic, token_embed=self.token_embed,
        pos_embed=self.pos_embed, dropout=self.dropout, layers=self._layers,
        ln_final=getattr(self, "ln_final", lambda x: x),
        type_embed=getattr(self, "type_embed", None),
        ln_embed=getattr(self, "ln_embed", None))

  def _layers(self, x_BLD: jax.Array, key_mask_BL: jax.Array | None,
              deterministic: bool | None) -> jax.Array:
    cfg = self.config

    def apply(block: TransformerBlock, x_BLD: jax.Array) -> jax.Array:
      return block(x_BLD, key_mask_BL, deterministic)
    if cfg.remat:
      apply = nnx.remat(apply, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      scan = nnx.scan(apply, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      return scan(self.layers, x_BLD)
    for block in self.blocks():
      x_BLD = apply(block, x_BLD)
    return x_BLD

  def blocks(self) -> list[TransformerBlock]:
    """The blocks: one stacked block with `scan_layers`, else one a layer."""
    if self.config.scan_layers:
      return [self.layers]
    return [getattr(self, f"layer_{i}") for i in range(self.config.num_layers)]

  def init_cache(self, batch_size: int, max_len: int) -> None:
    """Creates (or resets) the decoding caches for `batch_size` sequences of
    up to `max_len` tokens (<= config.max_len). Call it outside `nnx.jit`;
    decoding steps then run under `nnx.jit` and advance the caches."""
    if not 1 <= max_len <= self.config.max_len:
      raise ValueError(f"max_len must be in [1, {self.config.max_len}] (the "
                       f"model's max_len), got {max_len}")
    self.pos_embed.init_cache()
    for block in self.blocks():
      block.attention.init_cache(batch_size, max_len)


def make_model(model: ModelConfig | Any, *, vocab_size: int, causal: bool,
               decode: bool = False, rngs: nnx.Rngs) -> Transformer:
  """Builds the NNX `Transformer` from a model section, as
  `performer_jax.linen.make_model` builds the Linen one.

  Args:
    model: a ModelConfig, or a ConfigDict/mapping it is parsed from.
    vocab_size: number of token ids (input and output).
    causal: True for the decoder-only (causal LM) model, False for the
      bidirectional encoder (masked LM).
    decode: build it in decoding mode (causal only); `init_cache` next.
    rngs: as `Transformer`, e.g. `nnx.Rngs(0)` or `nnx.Rngs(params=0,
      random_features=1, dropout=2)`.

  Raises:
    ValueError: naming the bad key or argument.
  """
  model = transformer.parse_model_args(model, vocab_size=vocab_size,
                                       causal=causal, decode=decode)
  return Transformer(model, vocab_size, bool(causal), bool(decode),
                     rngs=rngs)
