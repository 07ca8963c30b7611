"""Pre-LayerNorm Transformer language models built on `MultiHeadAttention`.

One module covers both models of the Performer paper:
  * the encoder (`causal=False`): bidirectional attention, for masked LM;
  * the decoder-only model (`causal=True`): causal attention, for causal LM,
    with a `decode=True` variant that runs one token per call on a cache.

Each of the `num_layers` blocks computes
  x = x + Dropout(Attention(LN(x)))
  x = x + Dropout(MLP(LN(x)))        MLP = Dense -> gelu -> Dense
after token + position embedding (with dropout), and a final LayerNorm feeds
the tied output embedding (see embeddings.py), giving float32 logits whatever
the compute dtype.

The blocks can be rematerialized (`remat`) and scanned (`scan_layers`): with
`nn.scan` the parameters, random features and decode caches of all layers are
stacked along a leading "layers" axis, so a 36-layer model compiles one block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from performer_jax.models import config as config_lib
from performer_jax.models import embeddings
from performer_jax.nn import MultiHeadAttention

# Logical axis names used by the parameters -> mesh axes. Model parallelism
# splits attention heads and the MLP hidden units; data parallelism splits
# the batch; everything else is replicated.
LOGICAL_AXIS_RULES = (
    ("batch", "data"),
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", None),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static (hashable) hyperparameters of a `Transformer`.

  Built from a validated `model` ConfigDict by `make_model`; see
  config.py for the meaning and allowed values of each field.
  """
  vocab_size: int
  causal: bool
  num_layers: int
  num_heads: int
  emb_dim: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  posemb: str = "learned"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  scan_layers: bool = False
  attention: str = "softmax"
  kernel: str = "softmax"
  num_features: int = 0
  orthogonal: bool = True
  scaling: str = "chi"
  chunk_size: int = 128
  implementation: str = "auto"
  decode: bool = False


def _ln(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones,
                                              ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             ("embed",)))


def _dense(cfg: TransformerConfig, features: int, axes: tuple[str, str],
           name: str) -> nn.Dense:
  return nn.Dense(
      features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.xavier_uniform(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             (axes[1],)))


class MlpBlock(nn.Module):
  """[B, L, D] -> [B, L, D]: Dense(mlp_dim) -> gelu -> Dense(emb_dim)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    cfg = self.config
    h_BLF = _dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "wi")(x_BLD)
    h_BLF = nn.gelu(h_BLF)
    return _dense(cfg, cfg.emb_dim, ("mlp", "embed"), "wo")(h_BLF)


class TransformerBlock(nn.Module):
  """One pre-LN block. Returns `(x, None)` so that `nn.scan` can stack it."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array, key_mask_BL: jax.Array | None,
               deterministic: bool) -> tuple[jax.Array, None]:
    cfg = self.config
    h_BLD = _ln(cfg, "ln_attention")(x_BLD)
    # The residual dropout below already drops the attention output, so the
    # module's own dropout (on the head outputs) stays off.
    h_BLD = MultiHeadAttention(
        num_heads=cfg.num_heads, attention=cfg.attention, kernel=cfg.kernel,
        num_features=cfg.num_features, orthogonal=cfg.orthogonal,
        scaling=cfg.scaling, chunk_size=cfg.chunk_size,
        implementation=cfg.implementation, causal=cfg.causal,
        dropout_rate=0.0, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        decode=cfg.decode, name="attention")(
            h_BLD, key_mask=key_mask_BL, deterministic=deterministic)
    h_BLD = nn.Dropout(cfg.dropout_rate)(h_BLD, deterministic=deterministic)
    x_BLD = x_BLD + h_BLD

    h_BLD = _ln(cfg, "ln_mlp")(x_BLD)
    h_BLD = MlpBlock(cfg, name="mlp")(h_BLD)
    h_BLD = nn.Dropout(cfg.dropout_rate)(h_BLD, deterministic=deterministic)
    return x_BLD + h_BLD, None


class Transformer(nn.Module):
  """Encoder (`causal=False`) or decoder-only (`causal=True`) language model.

  Variables: "params"; "random_features" (FAVOR with a projection, one per
  layer, stacked along axis 0 when `scan_layers`); "cache" when `decode`.
  Init rngs: {"params", "random_features"}; training also needs "dropout".
  """
  config: TransformerConfig

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
    if inputs_BL.ndim != 2 or not jnp.issubdtype(inputs_BL.dtype,
                                                  jnp.integer):
      raise ValueError(f"inputs must be integer token ids of shape [B, L], "
                       f"got {inputs_BL.dtype} {inputs_BL.shape}")
    if key_mask_BL is not None and key_mask_BL.shape != inputs_BL.shape:
      raise ValueError(f"key_mask shape {key_mask_BL.shape} must equal the "
                       f"inputs shape {inputs_BL.shape}")
    if key_mask_BL is not None:
      key_mask_BL = key_mask_BL.astype(jnp.bool_)

    embed = embeddings.TiedEmbedding(cfg.vocab_size, cfg.emb_dim,
                                     dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype,
                                     name="token_embed")
    x_BLD = embed(inputs_BL)
    x_BLD = embeddings.PositionEmbedding(
        cfg.max_len, cfg.emb_dim, posemb=cfg.posemb, decode=cfg.decode,
        param_dtype=cfg.param_dtype, name="pos_embed")(x_BLD)
    x_BLD = nn.Dropout(cfg.dropout_rate)(x_BLD, deterministic=deterministic)

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
      x_BLD, _ = block(cfg, name="layers")(x_BLD, key_mask_BL, deterministic)
    else:
      for i in range(cfg.num_layers):
        x_BLD, _ = block(cfg, name=f"layer_{i}")(x_BLD, key_mask_BL,
                                                 deterministic)

    x_BLD = _ln(cfg, "ln_final")(x_BLD)
    return embed.attend(x_BLD)


def make_model(model_config: ml_collections.ConfigDict, *, vocab_size: int,
               causal: bool, decode: bool = False) -> Transformer:
  """Builds a `Transformer` from a `model` config section.

  Args:
    model_config: the section described in config.py (see
      `default_model_config`); validated here.
    vocab_size: number of token ids (input and output).
    causal: True for the decoder-only (causal LM) model, False for the
      bidirectional encoder (masked LM).
    decode: build the one-token-per-call decoding variant (causal only). It
      shares the parameter tree of the `decode=False` model.

  Raises:
    ValueError: naming the bad key or argument.
  """
  config_lib.validate_model_config(model_config)
  if (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
      or vocab_size < 1):
    raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
  if decode and not causal:
    raise ValueError("decode=True needs causal=True: only the decoder-only "
                     "model can generate token by token")
  att = model_config.attention
  num_features = att.num_features or 0
  return Transformer(TransformerConfig(
      vocab_size=vocab_size,
      causal=bool(causal),
      num_layers=model_config.num_layers,
      num_heads=model_config.num_heads,
      emb_dim=model_config.emb_dim,
      mlp_dim=model_config.mlp_dim,
      max_len=model_config.max_len,
      dropout_rate=float(model_config.dropout_rate),
      posemb=model_config.posemb,
      dtype=config_lib.DTYPES[model_config.dtype],
      param_dtype=config_lib.DTYPES[model_config.param_dtype],
      remat=model_config.remat,
      scan_layers=model_config.scan_layers,
      attention=att.kind,
      kernel=att.kernel,
      num_features=num_features,
      orthogonal=att.orthogonal,
      scaling=att.scaling,
      chunk_size=att.chunk_size,
      implementation=att.implementation,
      decode=bool(decode)))
