"""The Transformer's structure, written once over layers passed in as
callables: the Linen modules (`performer_jax.linen.transformer`) and the NNX
modules (`performer_jax.nnx.transformer`) both run it, so the two APIs build
the same function with the same parameter tree.

Pre-LN block: x + Dropout(Attention(LN(x))), then x + Dropout(MLP(LN(x)));
`norm="post"` (BERT): LN(x + Dropout(Attention(x))), then LN(x +
Dropout(MLP(x))), without a final LayerNorm.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.schemas.sections import ModelConfig

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


def add_token_type(x_BLD: jax.Array, table_TD: jax.Array) -> jax.Array:
  """Adds the code of token type 0 (single-segment inputs) to every
  position."""
  return x_BLD + table_TD[0].astype(x_BLD.dtype)


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
