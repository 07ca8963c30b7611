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

BERT-style options of the model section (`norm="post"`, `activation=
"gelu_exact"`, `ln_epsilon`, `token_types`, `embedding_norm`) give the
post-LN block x = LN(x + Dropout(Attention(x))), x = LN(x + Dropout(MLP(x)))
without a final LayerNorm, and BERT's embeddings LN(token + position +
token type 0); `performer_jax.convert.bert` imports such checkpoints.

The blocks can be rematerialized (`remat`) and scanned (`scan_layers`): with
`nn.scan` the parameters, random features and decode caches of all layers are
stacked along a leading "layers" axis, so a 36-layer model compiles one block.

The model's structure (`forward`, `residual_block`, `mlp`) is written once,
over layers passed in as callables: the Linen modules below and the NNX
modules of `performer_jax.nnx` both run it, so the two APIs build the same
function with the same parameter tree.
"""

from __future__ import annotations

from typing import Any, Callable

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.config.sections import ModelConfig
from performer_jax.models import embeddings
from performer_jax.nn import core
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


# The logical axes of the MLP's "wi" and "wo" kernels (biases: the last).
MLP_AXES = {"wi": ("embed", "mlp"), "wo": ("mlp", "embed")}
LN_AXES = ("embed",)
TYPE_AXES = (None, "embed")
# config.model.activation -> the MLP's nonlinearity ("gelu" is nn.gelu's
# tanh approximation; BERT checkpoints use the exact erf form).
ACTIVATIONS = {"gelu": nn.gelu,
               "gelu_exact": functools.partial(nn.gelu, approximate=False)}

Layer = Callable[..., jax.Array]


def check_inputs(inputs_BL: jax.Array,
                 key_mask_BL: jax.Array | None) -> jax.Array | None:
  """Raises unless inputs are int [B, L] ids (and the mask [B, L]); returns
  the mask as bool."""
  if inputs_BL.ndim != 2 or not jnp.issubdtype(inputs_BL.dtype,
                                                jnp.integer):
    raise ValueError(f"inputs must be integer token ids of shape [B, L], "
                     f"got {inputs_BL.dtype} {inputs_BL.shape}")
  if key_mask_BL is not None and key_mask_BL.shape != inputs_BL.shape:
    raise ValueError(f"key_mask shape {key_mask_BL.shape} must equal the "
                     f"inputs shape {inputs_BL.shape}")
  return None if key_mask_BL is None else key_mask_BL.astype(jnp.bool_)


def mlp(x_BLD: jax.Array, wi: Layer, wo: Layer,
        activation: Layer = nn.gelu) -> jax.Array:
  """[B, L, D] -> [B, L, D]: wi (Dense to mlp_dim) -> activation -> wo."""
  return wo(activation(wi(x_BLD)))


def residual_block(x_BLD: jax.Array, key_mask_BL: jax.Array | None,
                   deterministic: bool | None, *, ln_attention: Layer,
                   attention: Layer, ln_mlp: Layer, mlp_block: Layer,
                   dropout: Layer, norm: str = "pre") -> jax.Array:
  """One pre-LN block: x + Dropout(Attention(LN(x))), then
  x + Dropout(MLP(LN(x))); with `norm="post"` (BERT) LN(x + Dropout(
  Attention(x))), then LN(x + Dropout(MLP(x))). `dropout(x,
  deterministic=...)` is called once per branch."""
  # The residual dropout already drops the attention output, so the
  # attention module's own dropout (on the head outputs) stays off.
  if norm == "post":
    h_BLD = attention(x_BLD, key_mask=key_mask_BL,
                      deterministic=deterministic)
    x_BLD = ln_attention(x_BLD + dropout(h_BLD, deterministic=deterministic))
    h_BLD = mlp_block(x_BLD)
    return ln_mlp(x_BLD + dropout(h_BLD, deterministic=deterministic))
  h_BLD = attention(ln_attention(x_BLD), key_mask=key_mask_BL,
                    deterministic=deterministic)
  x_BLD = x_BLD + dropout(h_BLD, deterministic=deterministic)
  h_BLD = mlp_block(ln_mlp(x_BLD))
  return x_BLD + dropout(h_BLD, deterministic=deterministic)


def forward(inputs_BL: jax.Array, key_mask_BL: jax.Array | None,
            deterministic: bool | None, *, token_embed: Any,
            pos_embed: Layer, dropout: Layer, layers: Layer,
            ln_final: Layer, type_embed: Layer | None = None,
            ln_embed: Layer | None = None) -> jax.Array:
  """Token ids -> logits: embed, add positions (and the token type,
  `type_embed`), LayerNorm them (`ln_embed`, if given), dropout, the blocks
  (`layers(x, key_mask, deterministic)`), a final LayerNorm (the identity
  after post-LN blocks) and the tied output embedding
  (`token_embed.attend`)."""
  key_mask_BL = check_inputs(inputs_BL, key_mask_BL)
  x_BLD = pos_embed(token_embed(inputs_BL))
  if type_embed is not None:
    x_BLD = type_embed(x_BLD)
  if ln_embed is not None:
    x_BLD = ln_embed(x_BLD)
  x_BLD = dropout(x_BLD, deterministic=deterministic)
  x_BLD = layers(x_BLD, key_mask_BL, deterministic)
  return token_embed.attend(ln_final(x_BLD))


def _ln(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.ln_epsilon, dtype=cfg.compute_dtype,
      param_dtype=cfg.storage_dtype, name=name,
      scale_init=core.logical_init(nn.initializers.ones, LN_AXES),
      bias_init=core.logical_init(nn.initializers.zeros, LN_AXES))


def _dense(cfg: ModelConfig, features: int, name: str) -> nn.Dense:
  axes = MLP_AXES[name]
  return nn.Dense(
      features, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
      name=name,
      kernel_init=core.logical_init(nn.initializers.xavier_uniform(), axes),
      bias_init=core.logical_init(nn.initializers.zeros, axes[1:]))


class MlpBlock(nn.Module):
  """[B, L, D] -> [B, L, D]: Dense(mlp_dim) -> gelu -> Dense(emb_dim)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    cfg = self.config
    return mlp(x_BLD, _dense(cfg, cfg.mlp_dim, "wi"),
               _dense(cfg, cfg.emb_dim, "wo"), ACTIVATIONS[cfg.activation])


class Identity(nn.Module):
  """The final "LayerNorm" of a post-LN model, whose blocks end normalized
  (a module, so that `capture_intermediates` finds "ln_final" either way)."""

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    return x_BLD


def add_token_type(x_BLD: jax.Array, table_TD: jax.Array) -> jax.Array:
  """Adds the code of token type 0 (single-segment inputs) to every
  position."""
  return x_BLD + table_TD[0].astype(x_BLD.dtype)


class TokenTypeEmbedding(nn.Module):
  """`[token_types, D]` table; adds row 0 (`add_token_type`)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    cfg = self.config
    table_TD = self.param(
        "embedding",
        core.logical_init(embeddings.POSITION_INIT, TYPE_AXES),
        (cfg.token_types, cfg.emb_dim), cfg.storage_dtype)
    return add_token_type(x_BLD, table_TD)


class TransformerBlock(nn.Module):
  """One pre-LN block. Returns `(x, None)` so that `nn.scan` can stack it."""
  config: ModelConfig
  causal: bool
  decode: bool

  @nn.compact
  def __call__(self, x_BLD: jax.Array, key_mask_BL: jax.Array | None,
               deterministic: bool) -> tuple[jax.Array, None]:
    cfg = self.config
    attention = MultiHeadAttention.from_config(
        cfg.attention, num_heads=cfg.num_heads, causal=self.causal,
        dropout_rate=0.0, dtype=cfg.compute_dtype,
        param_dtype=cfg.storage_dtype, decode=self.decode, name="attention")
    dropout = lambda h, deterministic: nn.Dropout(cfg.dropout_rate)(
        h, deterministic=deterministic)
    return residual_block(
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
    return forward(inputs_BL, key_mask_BL, deterministic, token_embed=embed,
                   pos_embed=pos_embed, dropout=dropout,
                   layers=self._layers(), ln_final=ln_final,
                   type_embed=type_embed, ln_embed=ln_embed)

  def _layers(self) -> Layer:
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
  model = parse_model_args(model, vocab_size=vocab_size, causal=causal,
                           decode=decode)
  return Transformer(model, vocab_size=vocab_size, causal=bool(causal),
                     decode=bool(decode))


def parse_model_args(model: ModelConfig | Any, *, vocab_size: int,
                     causal: bool, decode: bool) -> ModelConfig:
  """`make_model`'s arguments checked (for Linen and NNX): the parsed model
  section."""
  model = model if isinstance(model, ModelConfig) else ModelConfig.parse(
      model)
  check_vocab_size(vocab_size)
  if decode and not causal:
    raise ValueError("decode=True needs causal=True: only the decoder-only "
                     "model can generate token by token")
  return model


def check_vocab_size(vocab_size: Any) -> None:
  if (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
      or vocab_size < 1):
    raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
