"""`MultiHeadAttention`: softmax, FAVOR+ or L2 (Lipschitz) attention in Flax.

Collections:
  params:          query/key/value/out kernels (L2 ties key to query).
  random_features: {"projection": float32 [num_features, head_dim]} for FAVOR+
                   kernels with a projection. It is *state*, not a parameter:
                   the optimizer never sees it, and `redraw_random_features`
                   replaces it explicitly.
  cache:           decoding state when `decode=True`.

L2 attention follows Kim, Papamakarios & Mnih (2021), Eq. (7): the key weights
are the query weights (W_K = W_Q, per head) and the value path of head h is
F_h(X) = P_h X A_h with A_h = W_Q,h W_Q,h^T / sqrt(D/H), followed by W_V,h
and W_O. Both the tying and A_h are needed for the paper's Lipschitz bound
(Theorem 3.2); a free W_K or a plain value projection voids it. A_h is never
formed: P_h (X W_Q,h) is computed first and then multiplied by the small
`[head_dim, head_dim]` matrix W_Q,h^T W_V,h.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.config.sections import AttentionConfig
from performer_jax.nn import core

ATTENTION_KINDS = api.ATTENTION_KINDS
RF_COLLECTION = "random_features"


class ProjectionWeights(nn.Module):
  """The kernel (and bias) of one projection, as a `core.WeightSpec` says.

  A `nn.DenseGeneral` without the product: the same names, shapes and
  initial values (the kernel initializer sees DenseGeneral's flat shape), so
  the parameter tree is the one a DenseGeneral or a bare head kernel makes.
  """
  spec: core.WeightSpec
  kernel_init: Callable
  param_dtype: Any

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    spec = self.spec
    init = lambda rng: spec.init_kernel(self.kernel_init, rng,
                                        self.param_dtype)
    weights = {"kernel": self.param(
        "kernel", core.logical_init(init, spec.kernel_axes))}
    if spec.use_bias:
      weights["bias"] = self.param(
          "bias", core.logical_init(lambda rng: spec.init_bias(
              self.param_dtype), spec.bias_axes))
    return weights


class MultiHeadAttention(nn.Module):
  """Multi-head attention with a choice of softmax, FAVOR+ or L2 attention.

  The math is `core.AttentionCore`'s, shared with the NNX module
  (`performer_jax.nnx.MultiHeadAttention`); this module owns the variables.

  Attributes:
    num_heads: H.
    qkv_features: total query/key/value width (default: input width); must
      divide by num_heads.
    out_features: output width (default: input width).
    attention: "softmax" (exact), "favor" (FAVOR+) or "l2" (tied, Lipschitz).
    kernel: FAVOR+ feature map: "softmax", "softmax_hyperbolic",
      "softmax_trig", "relu" or a function (see `favor_attention`).
    num_features: FAVOR+ random features m. With kernel "relu", None or 0
      gives the deterministic `relu(x) + eps` features (no projection).
    orthogonal, scaling: how the projection is drawn (see
      `gaussian_orthogonal_random_matrix`).
    chunk_size: causal FAVOR+ chunk length.
    implementation: causal FAVOR+ implementation, "auto" (the compiled CPU
      kernel on the CPU backend when built, else "slim"; "parallel" off
      the CPU), "kernel", "slim" (recompute inside each chunk: sub-linear
      memory), "parallel" (no sequential loop over chunks) or "autodiff"
      (see `favor_attention`).
    causal: autoregressive masking.
    dropout_rate: dropout on the concatenated head outputs (FAVOR+ has no
      attention matrix to drop from, so every kind uses the same place).
    dtype: compute dtype of the projections (attention math is float32).
    param_dtype: parameter dtype.
    decode: one-token-at-a-time decoding with a `cache` collection.
  """
  num_heads: int
  qkv_features: int | None = None
  out_features: int | None = None
  attention: str = "softmax"
  kernel: str | Callable = "softmax"
  num_features: int | None = 256
  orthogonal: bool = True
  scaling: str = "chi"
  chunk_size: int = api.DEFAULT_CHUNK_SIZE
  implementation: str = "auto"
  causal: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  decode: bool = False
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @classmethod
  def from_config(cls, config: AttentionConfig, **kwargs
                  ) -> "MultiHeadAttention":
    """The module for a `model.attention` section; `kwargs` set the other
    attributes (num_heads, causal, dtype, ...)."""
    return cls(**core.config_fields(config), **kwargs)

  def attention_config(self) -> AttentionConfig:
    """These attributes as a checked AttentionConfig (the one place their
    values are validated, for modules and configs alike)."""
    return core.module_config(
        attention=self.attention, kernel=self.kernel,
        num_features=self.num_features, orthogonal=self.orthogonal,
        scaling=self.scaling, chunk_size=self.chunk_size,
        implementation=self.implementation)

  def attention_core(self, in_features: int) -> core.AttentionCore:
    """The checked attributes and the math, for inputs `[..., in_features]`."""
    return core.AttentionCore.create(
        self.attention_config(), in_features=in_features,
        num_heads=self.num_heads, qkv_features=self.qkv_features,
        out_features=self.out_features, causal=self.causal,
        decode=self.decode, use_bias=self.use_bias, dtype=self.dtype)

  def _projection(self, layer: core.AttentionCore) -> jax.Array | None:
    if not layer.config.uses_projection:
      return None
    # Without a dedicated rng the projection is derived from the params rng,
    # so `model.init(key, x)` still works and is reproducible by seed.
    name = RF_COLLECTION if self.has_rng(RF_COLLECTION) else "params"
    return self.variable(RF_COLLECTION, "projection",
                         lambda: layer.draw_projection(self.make_rng(name))
                         ).value

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None,
               *, key_mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Attends from `inputs_q [B, Lq, Din]` to `inputs_kv [B, Lk, Din]`.

    Args:
      inputs_q: queries (and keys/values when inputs_kv is None).
      inputs_kv: optional separate key/value inputs.
      key_mask: bool `[B, Lk]`, True = attend (padding mask).
      deterministic: disables dropout.

    Returns:
      `[B, Lq, out_features]` in `dtype`.
    """
    layer = self.attention_core(inputs_q.shape[-1])
    weights = {spec.name: ProjectionWeights(spec, self.kernel_init,
                                            self.param_dtype,
                                            name=spec.name)()
               for spec in layer.weight_specs()}
    projection = self._projection(layer)
    dropout = functools.partial(nn.Dropout(rate=self.dropout_rate),
                                deterministic=deterministic)
    decoding = self.decode and not self.is_initializing()
    out, cache = layer(weights, projection, inputs_q, inputs_kv,
                       key_mask=key_mask, dropout=dropout,
                       cache=self._read_cache(layer) if decoding else None)
    if decoding:
      for name, value in cache.items():
        self.put_variable("cache", name, value)
    elif self.decode:
      # `init` on a full-length input sizes the cache: max_len and batch.
      batch, max_len = (inputs_q if inputs_kv is None else inputs_kv
                        ).shape[:2]
      for name, value in layer.init_cache(batch, max_len,
                                          projection).items():
        self.variable("cache", name, lambda value=value: value)
    return out

  def _read_cache(self, layer: core.AttentionCore) -> dict[str, jax.Array]:
    if not self.has_variable("cache", core.CACHE_INDEX):
      raise ValueError("decode=True needs a cache: call init with a "
                       "full-length input [batch, max_len, features] first.")
    return {name: self.get_variable("cache", name)
            for name in layer.cache_names()}


def redraw_random_features(variables: dict, rng: jax.Array, *,
                           orthogonal: bool = True,
                           scaling: str = "chi") -> dict:
  """Returns `variables` with every random-feature projection redrawn.

  A pure function of (variables, rng), so a trainer can call it inside a
  jitted step every N steps. Leaves `[..., M, D]` with leading axes (from
  `nn.scan` over layers) get an independent draw per leading index, and every
  leaf gets its own key, so no two layers share features.

  Args:
    variables: a module's variables (any collections; only
      "random_features" is touched).
    rng: PRNG key for the new draw.
    orthogonal, scaling: as `gaussian_orthogonal_random_matrix`.
  """
  if RF_COLLECTION not in variables:
    return variables
  leaves, treedef = jax.tree_util.tree_flatten(variables[RF_COLLECTION])
  new_leaves = core.redraw_leaves(leaves, rng, orthogonal=orthogonal,
                                  scaling=scaling)
  return {**variables,
          RF_COLLECTION: jax.tree_util.tree_unflatten(treedef, new_leaves)}
