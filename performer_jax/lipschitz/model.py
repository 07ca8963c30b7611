"""An invertible L2 Transformer language model (Kim et al. 2021, Section 5).

Hidden blocks are invertible residuals, `x + ContractiveL2Attention(x)` and
`x + ContractiveMlp(x)` (Lip <= c < 1 each), so the stack is a bijection that
`invert_hidden` undoes by fixed-point iteration. No LayerNorm (no global
Lipschitz bound) or dropout (a random branch) inside the blocks: dropout on
the embeddings, the final LayerNorm and tied output embedding sit outside.
Same call as `linen.Transformer` (`inputs_BL int32 -> logits_BLV float32`),
built from the same `model` config section by `make_invertible_model`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.core import transformer as core
from performer_jax.linen import embeddings
from performer_jax.lipschitz import contractive
from performer_jax.lipschitz import invertible
from performer_jax.schemas.base import ConfigError
from performer_jax.schemas.sections import ModelConfig


class InvertibleL2Transformer(nn.Module):
  """Byte/token LM whose hidden stack is invertible (contractive L2 blocks).

  Params: token_embed, pos_embed, blocks_{2i} (attention of layer i),
  blocks_{2i+1} (MLP of layer i), ln_final. Each block holds its branch under
  "branch".

  Attributes:
    config: the model section (num_layers, num_heads, emb_dim, mlp_dim,
      max_len, dropout_rate on the embeddings, posemb, dtypes).
    vocab_size, causal: as `Transformer`.
    c, norm: every residual branch has Lip_norm <= c < 1.
    stop_gradient_bound: stop gradients through the normalizers.
  """
  config: ModelConfig
  vocab_size: int
  causal: bool
  c: float = 0.9
  norm: str = "inf"
  stop_gradient_bound: bool = False

  def setup(self):
    cfg = self.config
    dtypes = dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
    self.token_embed = embeddings.TiedEmbedding(
        self.vocab_size, cfg.emb_dim, **dtypes)
    self.pos_embed = embeddings.PositionEmbedding(
        cfg.max_len, cfg.emb_dim, posemb=cfg.posemb,
        param_dtype=cfg.storage_dtype)
    blocks = []
    for _ in range(cfg.num_layers):
      blocks.append(invertible.InvertibleResidual(
          contractive.ContractiveL2Attention(
              num_heads=cfg.num_heads, c=self.c, norm=self.norm,
              causal=self.causal,
              stop_gradient_bound=self.stop_gradient_bound, **dtypes)))
      blocks.append(invertible.InvertibleResidual(
          contractive.ContractiveMlp(
              hidden_dim=cfg.mlp_dim, c=self.c, norm=self.norm,
              stop_gradient_norm=self.stop_gradient_bound, **dtypes)))
    self.blocks = blocks
    self.ln_final = nn.LayerNorm(**dtypes)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _block_kwargs(self, index: int, key_mask_BL):
    return {"key_mask": key_mask_BL} if index % 2 == 0 else {}

  def embed(self, inputs_BL: jax.Array, *,
            deterministic: bool = True) -> jax.Array:
    """int [B, L] -> [B, L, D]: token + position embedding (+ dropout)."""
    if inputs_BL.ndim != 2 or not jnp.issubdtype(inputs_BL.dtype,
                                                  jnp.integer):
      raise ValueError(f"inputs must be integer token ids of shape [B, L], "
                       f"got {inputs_BL.dtype} {inputs_BL.shape}")
    x_BLD = self.pos_embed(self.token_embed(inputs_BL))
    return self.dropout(x_BLD, deterministic=deterministic)

  def hidden(self, x_BLD: jax.Array, *,
             key_mask_BL: jax.Array | None = None) -> jax.Array:
    """The invertible stack: [B, L, D] embeddings -> [B, L, D] features."""
    for i, block in enumerate(self.blocks):
      x_BLD = block(x_BLD, **self._block_kwargs(i, key_mask_BL))
    return x_BLD

  def branch(self, x_BLD: jax.Array, index: int, *,
             key_mask_BL: jax.Array | None = None) -> jax.Array:
    """g of residual block `index` (0 .. 2 * num_layers - 1)."""
    block = self.blocks[index]
    return block.branch(x_BLD, **self._block_kwargs(index, key_mask_BL))

  def __call__(self, inputs_BL: jax.Array, *,
               key_mask_BL: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Token ids -> float32 [B, L, vocab_size] logits.

    Args:
      inputs_BL: int32 [B, L] token ids, L <= max_len.
      key_mask_BL: optional bool [B, L], True at real tokens.
      deterministic: False enables embedding dropout ("dropout" rng).
    """
    if key_mask_BL is not None:
      if key_mask_BL.shape != inputs_BL.shape:
        raise ValueError(f"key_mask shape {key_mask_BL.shape} must equal the "
                         f"inputs shape {inputs_BL.shape}")
      key_mask_BL = key_mask_BL.astype(jnp.bool_)
    x_BLD = self.embed(inputs_BL, deterministic=deterministic)
    x_BLD = self.hidden(x_BLD, key_mask_BL=key_mask_BL)
    return self.token_embed.attend(self.ln_final(x_BLD))


def invert_hidden(model: InvertibleL2Transformer, variables, h_BLD: jax.Array,
                  *, key_mask_BL: jax.Array | None = None,
                  max_iters: int = 100, atol: float = 1e-6,
                  rtol: float = 1e-6
                  ) -> tuple[jax.Array, list[invertible.InverseInfo]]:
  """Inverts `model.hidden`: features [B, L, D] -> embeddings [B, L, D].

  Undoes the residual blocks last to first, each by fixed-point iteration.

  Returns:
    (x_BLD, infos): infos[i] is the InverseInfo of block i (forward order).
  """
  infos = [None] * (2 * model.config.num_layers)
  x_BLD = h_BLD
  for index in reversed(range(len(infos))):
    g = lambda x, index=index: model.apply(
        variables, x, index, key_mask_BL=key_mask_BL,
        method=InvertibleL2Transformer.branch)
    x_BLD, infos[index] = invertible.fixed_point_inverse(
        g, x_BLD, max_iters=max_iters, atol=atol, rtol=rtol)
  return x_BLD, infos


def check_model(model: ModelConfig) -> None:
  """What the invertible model needs of a model section (ConfigError)."""
  if model.attention.kind != "l2":
    raise ConfigError("model_builder='invertible_l2' needs "
                      "config.model.attention.kind='l2', got "
                      f"{model.attention.kind!r}")
  if model.scan_layers:
    raise ConfigError("config.model.scan_layers=True is not supported by "
                      "model_builder='invertible_l2'; set it to False")
  # The BERT-style options of the standard Transformer (converted models).
  default = ModelConfig()
  changed = [f"config.model.{name}={getattr(model, name)!r}" for name in (
      "norm", "activation", "token_types", "embedding_norm")
             if getattr(model, name) != getattr(default, name)]
  if changed:
    raise ConfigError(f"model_builder='invertible_l2' does not support "
                      f"{', '.join(changed)}; leave them at their defaults")


def make_invertible_model(model: ModelConfig | Any, *, vocab_size: int,
                          causal: bool, c: float = 0.9, norm: str = "inf",
                          stop_gradient_bound: bool = False
                          ) -> InvertibleL2Transformer:
  """Builds an `InvertibleL2Transformer` from a model section.

  Uses num_layers, num_heads, emb_dim, mlp_dim, max_len, dropout_rate (on the
  embeddings only), posemb, dtype and param_dtype. attention.kind must be
  "l2"; the other attention keys (FAVOR+ settings) do not apply. remat is
  ignored; scan_layers=True is not supported.

  Args:
    model: a ModelConfig, or a ConfigDict/mapping it is parsed from.
    vocab_size: number of token ids.
    causal: causal (decoder) or bidirectional model.
    c: Lipschitz constant of every residual branch, in (0, 1).
    norm: "inf" or "2", the norm the contraction is guaranteed in.
    stop_gradient_bound: stop gradients through the normalizers.

  Raises:
    ValueError: naming the bad key or argument.
  """
  model = model if isinstance(model, ModelConfig) else ModelConfig.parse(
      model)
  check_model(model)
  core.check_vocab_size(vocab_size)
  contractive.check_c_norm(c, norm)
  return InvertibleL2Transformer(model, vocab_size=vocab_size,
                                 causal=bool(causal), c=float(c), norm=norm,
                                 stop_gradient_bound=stop_gradient_bound)
