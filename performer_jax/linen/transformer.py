"""The Linen `Transformer`: encoder (masked LM) or decoder-only (causal LM).

The structure is `core.transformer.forward` over the Linen layers below.
`remat` rematerializes each block; `scan_layers` stacks every layer's
variables along a leading "layers" axis under `nn.scan`, so a deep model
compiles one block. `decode=True` runs one token (or a prefill) per call on a
"cache" collection (see decoding.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from performer_jax.core import transformer as core
from performer_jax.core.embeddings import POSITION_INIT
from performer_jax.core.sharding import logical_init
from performer_jax.linen import embeddings
from performer_jax.linen.attention import MultiHeadAttention
from performer_jax.schemas.sections import ModelConfig


def _ln(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.ln_epsilon, dtype=cfg.compute_dtype,
      param_dtype=cfg.storage_dtype, name=name,
      scale_init=logical_init(nn.initializers.ones, core.LN_AXES),
      bias_init=logical_init(nn.initializers.zeros, core.LN_AXES))


def _dense(cfg: ModelConfig, features: int, name: str) -> nn.Dense:
  axes = core.MLP_AXES[name]
  return nn.Dense(
      features, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
      name=name,
      kernel_init=logical_init(nn.initializers.xavier_uniform(), axes),
      bias_init=logical_init(nn.initializers.zeros, axes[1:]))


class MlpBlock(nn.Module):
  """[B, L, D] -> [B, L, D]: Dense(mlp_dim) -> gelu -> Dense(emb_dim)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    cfg = self.config
    return core.mlp(x_BLD, _dense(cfg, cfg.mlp_dim, "wi"),
                    _dense(cfg, cfg.emb_dim, "wo"),
                    core.ACTIVATIONS[cfg.activation])


class Identity(nn.Module):
  """The final "LayerNorm" of a post-LN model, whose blocks end normalized
  (a module, so that `capture_intermediates` finds "ln_final" either way)."""

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    return x_BLD


class TokenTypeEmbedding(nn.Module):
  """`[token_types, D]` table; adds row 0 (`add_token_type`)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    cfg = self.config
    table_TD = self.param(
        "embedding",
        logical_init(POSITION_INIT, core.TYPE_AXES),
        (cfg.token_types, cfg.emb_dim), cfg.storage_dtype)
    return core.add_token_type(x_BLD, table_TD)


class TransformerBlock(nn.Module):
  """One pre-LN block. Returns `(x, None)` so that `nn.scan` can stack it."""
  config: ModelConfig
  causal: bool
  decode: bool

  @nn.compact
  def __call__(self, x_BLD: jax.Array, key_mask_BL: jax.Array | None,
               deterministic: bool) -> tuple[jax.Array, None]:
    cfg = self.config
    attention = MultiHeadAttention(
        num_heads=cfg.num_heads, config=cfg.attention, causal=self.causal,
        dropout_rate=0.0, dtype=cfg.compute_dtype,
        param_dtype=cfg.storage_dtype, decode=self.decode, name="attention")
    dropout = lambda h, deterministic: nn.Dropout(cfg.dropout_rate)(
        h, deterministic=deterministic)
    return core.residual_block(
        x_BLD, key_mask_BL, deterministic,
        ln_attention=_ln(cfg, "ln_attention"), attention=attention,
        ln_mlp=_ln(cfg, "ln_mlp"), mlp_block=MlpBlock(cfg, name="mlp"),
        dropout=dropout, norm=cfg.norm), None


class Transformer(nn.Module):
  """Encoder (`causal=False`) or decoder-only (`causal=True`) language model.

  Attributes:
    config: the model section (config.sections.ModelConfig).
    vocab_size: number of token ids (input and output).
    causal: decoder-only (causal LM) if True, else encoder (masked LM).
    decode: one token per call on a "cache" (causal only); shares the
      parameter tree of the `decode=False` model.

  Variables: "params"; "random_features" (FAVOR with a projection, one per
  layer, stacked along axis 0 when `scan_layers`); "cache" when `decode`.
  Init rngs: {"params", "random_features"}; training also needs "dropout".
  """
  config: ModelConfig
  vocab_size: int
  causal: bool
  decode: bool = False

  @nn.compact
  def __call__(self, inputs_BL: jax.Array, *,
               key_mask_BL: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Token ids -> next-token (causal) or token (masked LM) logits.

    Args:
      inputs_BL: int32 [B, L] token ids; L <= max_len, and L == 1 when
        decoding (after the cache was sized by `init`).
      key_mask_BL: optional bool [B, L], True at real tokens; padded keys
        are excluded from every query's attention.
      deterministic: False enables dropout (needs the "dropout" rng).

    Returns:
      float32 [B, L, vocab_size] logits.
    """
    cfg = self.config
    embed = embeddings.TiedEmbedding(self.vocab_size, cfg.emb_dim,
                                     dtype=cfg.compute_dtype,
                                     param_dtype=cfg.storage_dtype,
                                     name="token_embed")
    pos_embed = embeddings.PositionEmbedding(
        cfg.max_len, cfg.emb_dim, posemb=cfg.posemb, decode=self.decode,
        param_dtype=cfg.storage_dtype, name="pos_embed")
    dropout = lambda x, deterministic: nn.Dropout(cfg.dropout_rate)(
        x, deterministic=deterministic)
    type_embed = (TokenTypeEmbedding(cfg, name="type_embed")
                  if cfg.token_types else None)
    ln_embed = _ln(cfg, "ln_embed") if cfg.embedding_norm else None
    ln_final = (Identity(name="ln_final") if cfg.norm == "post"
                else _ln(cfg, "ln_final"))
    return core.forward(inputs_BL, key_mask_BL, deterministic,
                        token_embed=embed, pos_embed=pos_embed,
                        dropout=dropout, layers=self._layers(),
                        ln_final=ln_final, type_embed=type_embed,
                        ln_embed=ln_embed)

  def _layers(self) -> core.Layer:
    """The blocks as one function `(x, key_mask, deterministic) -> x`."""
    cfg = self.config
    block = TransformerBlock
    if cfg.remat:
      # Argument 0 is `self`, so `deterministic` (a Python bool) is 3.
      block = nn.remat(block, prevent_cse=not cfg.scan_layers,
                       static_argnums=(3,))
    if cfg.scan_layers:
      block = nn.scan(
          block,
          variable_axes={"params": 0, "random_features": 0, "cache": 0},
          split_rngs={"params": True, "random_features": True,
                      "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      blocks = [block(cfg, self.causal, self.decode, name="layers")]
    else:
      blocks = [block(cfg, self.causal, self.decode, name=f"layer_{i}")
                for i in range(cfg.num_layers)]

    def layers(x_BLD, key_mask_BL, deterministic):
      for layer in blocks:
        x_BLD, _ = layer(x_BLD, key_mask_BL, deterministic)
      return x_BLD
    return layers


def make_model(model: ModelConfig | Any, *, vocab_size: int, causal: bool,
               decode: bool = False) -> Transformer:
  """Builds a `Transformer` from a model section.

  Args:
    model: a ModelConfig, or a ConfigDict/mapping it is parsed from.
    vocab_size: number of token ids (input and output).
    causal: True for the decoder-only (causal LM) model, False for the
      bidirectional encoder (masked LM).
    decode: build the one-token-per-call decoding variant (causal only). It
      shares the parameter tree of the `decode=False` model.

  Raises:
    ValueError: naming the bad key or argument.
  """
  model = core.parse_model_args(model, vocab_size=vocab_size,
                                causal=causal, decode=decode)
  return Transformer(model, vocab_size=vocab_size, causal=bool(causal),
                     decode=bool(decode))


