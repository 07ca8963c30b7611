"""`MultiHeadAttention` for Flax NNX: softmax, FAVOR+ or L2 attention.

The module owns its variables and runs `performer_jax.nn.core.AttentionCore`,
the math the Linen module runs too; its state has the names and shapes of
the Linen variables, so `convert.py` maps one onto the other:

  nnx.Param        query/key/value/out kernels and biases ("params"; L2 has
                   only query, value and out, W_K = W_Q).
  RandomFeatures   `projection`: float32 [num_features, head_dim] FAVOR+
                   features ("random_features"). Not a Param: optimizers
                   built with `wrt=nnx.Param` and `nnx.grad` leave it alone,
                   and `redraw_random_features` replaces it in place.
  nnx.Cache        the decoding state after `init_cache` ("cache"): a
                   constant-size prefix-sum state for FAVOR+, a key-value
                   cache for softmax and L2.

Every Param carries logical axis names ("embed", "heads", "kv") as
`out_sharding` metadata; see `core.shard_eagerly` for when they shard.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.config.sections import AttentionConfig
from performer_jax.nn import core


class RandomFeatures(nnx.Variable):
  """FAVOR+ random features: state that no optimizer or gradient touches."""


# nnx.bridge maps the Linen collection "random_features" to this type, so a
# bridged Linen module's features are RandomFeatures too.
nnx.register_variable_name("random_features", RandomFeatures, overwrite=True)


def _key(rngs: nnx.Rngs, name: str) -> jax.Array:
  """A key from stream `name`, else from "params" (else "default")."""
  return rngs[name if name in rngs else "params"]()


def make_dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
  """`nnx.Dropout(rate)` with its own stream: "dropout", else one forked from
  "params" (so `nnx.Rngs(params=0)` builds a trainable model too)."""
  if rate == 0.0:
    return nnx.Dropout(rate)
  return nnx.Dropout(rate, rngs=rngs["dropout" if "dropout" in rngs
                                      else "params"])


class ProjectionWeights(nnx.Module):
  """The kernel (and bias) of one projection, as a `core.WeightSpec` says:
  Linen's names, shapes and initializers, logical axes as metadata."""

  def __init__(self, spec: core.WeightSpec, kernel_init: Callable,
               param_dtype: Any, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        spec.init_kernel(kernel_init, rngs.params(), param_dtype),
        **core.nnx_sharding(spec.kernel_axes))
    self.bias = (nnx.Param(spec.init_bias(param_dtype),
                           **core.nnx_sharding(spec.bias_axes))
                 if spec.use_bias else nnx.data(None))

  def weights(self) -> dict[str, jax.Array | None]:
    return {"kernel": self.kernel[...],
            "bias": None if self.bias is None else self.bias[...]}


class MultiHeadAttention(nnx.Module):
  """Multi-head attention with a choice of softmax, FAVOR+ or L2 attention.

  Args:
    in_features: D, the input width.
    num_heads: H.
    qkv_features: total query/key/value width (default: in_features); must
      divide by num_heads.
    out_features: output width (default: in_features).
    attention: "softmax" (exact), "favor" (FAVOR+) or "l2" (tied, Lipschitz).
    kernel, num_features, orthogonal, scaling, chunk_size, implementation:
      FAVOR+'s feature map and random features, as
      `performer_jax.nn.MultiHeadAttention`.
    causal: autoregressive masking.
    dropout_rate: dropout on the concatenated head outputs; on in training
      mode (the NNX default; `model.eval()` turns it off).
    dtype: compute dtype of the projections (attention math is float32).
    param_dtype: parameter dtype.
    decode: one token per call on the cache of `init_cache` (causal only).
      An attribute, so `model.set_attributes(decode=True)` switches a
      trained model to decoding.
    use_bias: q/k/v and out biases.
    kernel_init: initializer of the kernels.
    rngs: streams "params", "random_features" (default: "params") and, with
      dropout, "dropout" (default: forked from "params").
  """

  def __init__(self, in_features: int, num_heads: int, *,
               qkv_features: int | None = None,
               out_features: int | None = None, attention: str = "softmax",
               kernel: str | Callable = "softmax",
               num_features: int | None = 256, orthogonal: bool = True,
               scaling: str = "chi",
               chunk_size: int = api.DEFAULT_CHUNK_SIZE,
               implementation: str = "auto", causal: bool = False,
               dropout_rate: float = 0.0, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, decode: bool = False,
               use_bias: bool = True,
               kernel_init: Callable = nnx.initializers.xavier_uniform(),
               rngs: nnx.Rngs):
    config = core.module_config(
        attention=attention, kernel=kernel, num_features=num_features,
        orthogonal=orthogonal, scaling=scaling, chunk_size=chunk_size,
        implementation=implementation)
    self.attention_core = core.AttentionCore.create(
        config, in_features=in_features, num_heads=num_heads,
        qkv_features=qkv_features, out_features=out_features, causal=causal,
        decode=decode, use_bias=use_bias, dtype=dtype)
    self.decode = decode
    for spec in self.attention_core.weight_specs():
      setattr(self, spec.name, ProjectionWeights(spec, kernel_init,
                                                 param_dtype, rngs=rngs))
    self.projection = (
        RandomFeatures(self.attention_core.draw_projection(
            _key(rngs, "random_features")))
        if config.uses_projection else nnx.data(None))
    self.dropout = make_dropout(dropout_rate, rngs)

  @classmethod
  def from_config(cls, config: AttentionConfig, in_features: int,
                  num_heads: int, *, rngs: nnx.Rngs,
                  **kwargs) -> "MultiHeadAttention":
    """The module for a `model.attention` section; `kwargs` set the other
    arguments (causal, dtype, ...)."""
    return cls(in_features, num_heads, **core.config_fields(config),
               rngs=rngs, **kwargs)

  def attention_config(self) -> AttentionConfig:
    """The attention arguments as a checked AttentionConfig."""
    return self.attention_core.config

  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None,
               *, key_mask: jax.Array | None = None,
               deterministic: bool | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Attends from `inputs_q [B, Lq, D]` to `inputs_kv [B, Lk, D]`.

    Args:
      inputs_q: queries (and keys/values when inputs_kv is None).
      inputs_kv: optional separate key/value inputs.
      key_mask: bool `[B, Lk]`, True = attend (padding mask).
      deterministic: True disables dropout; None: the module's mode
        (`train()`/`eval()`).
      rngs: dropout keys for this call (default: the module's stream).

    Returns:
      `[B, Lq, out_features]` in `dtype`.
    """
    layer = self.attention_core
    for x in (inputs_q, inputs_kv):
      if x is not None and x.shape[-1] != layer.in_features:
        raise ValueError(f"MultiHeadAttention was built for in_features="
                         f"{layer.in_features}, got inputs of shape "
                         f"{x.shape}.")
    core.check_decode(self.decode, layer.causal)
    weights = {spec.name: getattr(self, spec.name).weights()
               for spec in layer.weight_specs()}
    projection = None if self.projection is None else self.projection[...]
    dropout = functools.partial(self.dropout, deterministic=deterministic,
                                rngs=rngs)
    out, cache = layer(weights, projection, inputs_q, inputs_kv,
                       key_mask=key_mask, dropout=dropout,
                       cache=self._read_cache() if self.decode else None)
    for name, value in (cache or {}).items():
      getattr(self, name)[...] = value
    return out

  def init_cache(self, batch_size: int, max_len: int) -> None:
    """Creates (or resets) the decoding cache for `batch_size` sequences of
    up to `max_len` tokens. Call it outside `nnx.jit`; decoding steps then
    run under `nnx.jit` and update the cache in place.

    A module created under `nnx.vmap` (stacked layers) gets one cache per
    layer, stacked the same way.
    """
    layer = self.attention_core
    lead = self.query.kernel.shape[:-3]  # leading axes of stacked layers
    projection = None if self.projection is None else self.projection[...]
    for name, value in layer.init_cache(batch_size, max_len,
                                        projection).items():
      setattr(self, name, nnx.Cache(jnp.broadcast_to(value,
                                                     lead + value.shape)))

  def _read_cache(self) -> dict[str, jax.Array]:
    if not hasattr(self, core.CACHE_INDEX):
      raise ValueError("decode=True needs a cache: call "
                       "init_cache(batch_size, max_len) first.")
    return {name: getattr(self, name)[...]
            for name in self.attention_core.cache_names()}


def redraw_random_features(model: nnx.Module, rng: jax.Array, *,
                           orthogonal: bool = True,
                           scaling: str = "chi") -> None:
  """Redraws every `RandomFeatures` variable of `model` in place.

  Works eagerly and inside `nnx.jit`. Draws exactly what
  `performer_jax.nn.redraw_random_features` draws for the same model's Linen
  variables: leaf i (in the order of the Linen "random_features" tree) gets
  `fold_in(rng, i)`, and stacked layers an independent draw each.

  Args:
    model: any NNX module (a model, a layer, a bridged Linen module).
    rng: PRNG key for the new draw.
    orthogonal, scaling: as `gaussian_orthogonal_random_matrix`.
  """
  state = nnx.state(model, RandomFeatures)
  leaves, treedef = jax.tree.flatten(state)
  if leaves:
    new_leaves = core.redraw_leaves(leaves, rng, orthogonal=orthogonal,
                                    scaling=scaling)
    nnx.update(model, jax.tree.unflatten(treedef, new_leaves))
