"""The Linen `MultiHeadAttention`: softmax, FAVOR+ or L2 (Lipschitz).

Collections: "params" (query/key/value/out; L2 ties key to query),
"random_features" ({"projection": float32 [num_features, head_dim]} for
FAVOR+ with a projection: state the optimizer never sees, replaced only by
`redraw_random_features`) and, with `decode=True`, "cache". The math is
`core.attention.AttentionCore`'s, shared with the NNX module.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.core import attention as core
from performer_jax.core.sharding import logical_init
from performer_jax.schemas.sections import AttentionConfig

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
        "kernel", logical_init(init, spec.kernel_axes))}
    if spec.use_bias:
      weights["bias"] = self.param(
          "bias", logical_init(lambda rng: spec.init_bias(
              self.param_dtype), spec.bias_axes))
    return weights


class MultiHeadAttention(nn.Module):
  """Multi-head attention; `config` picks softmax, FAVOR+ or L2.

  Attributes:
    num_heads: H.
    config: the attention (kind, FAVOR+ kernel and features, chunk size,
      implementation); `AttentionConfig()` is FAVOR+ with 256 features.
    qkv_features: total q/k/v width (default: the input width), a multiple
      of num_heads; out_features: output width (default: the input width).
    causal: autoregressive masking; decode: one call per token (or prefill)
      on a "cache" sized by `init` on a full-length input.
    dropout_rate: dropout on the concatenated head outputs (FAVOR+ has no
      attention matrix to drop from).
    dtype: compute dtype of the projections (attention math is float32);
      param_dtype: parameter dtype.
  """
  num_heads: int
  config: AttentionConfig = AttentionConfig()
  qkv_features: int | None = None
  out_features: int | None = None
  causal: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  decode: bool = False
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.xavier_uniform()

  def attention_core(self, in_features: int) -> core.AttentionCore:
    """The checked attributes and the math, for inputs `[..., in_features]`."""
    return core.AttentionCore.create(
        self.config, in_features=in_features,
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
