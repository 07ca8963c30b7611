"""The NNX `MultiHeadAttention`: softmax, FAVOR+ or L2 (Lipschitz).

It runs `core.attention.AttentionCore`, the Linen module's math, and its
state has the Linen variables' names and shapes (`convert.py` maps one onto
the other): nnx.Param kernels and biases, `RandomFeatures` (the FAVOR+
projection, float32 [num_features, head_dim]: not a Param, so optimizers
built with `wrt=nnx.Param` leave it alone) and, after `init_cache`,
nnx.Cache decoding state.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from performer_jax.core import attention as core
from performer_jax.core.sharding import nnx_sharding
from performer_jax.schemas.sections import AttentionConfig


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
        **nnx_sharding(spec.kernel_axes))
    self.bias = (nnx.Param(spec.init_bias(param_dtype),
                           **nnx_sharding(spec.bias_axes))
                 if spec.use_bias else nnx.data(None))

  def weights(self) -> dict[str, jax.Array | None]:
    return {"kernel": self.kernel[...],
            "bias": None if self.bias is None else self.bias[...]}


class MultiHeadAttention(nnx.Module):
  """Multi-head attention; `config` picks softmax, FAVOR+ or L2.

  Args:
    in_features: D, the input width.
    num_heads: H.
    config: the attention, as the Linen `MultiHeadAttention`'s (default
      `AttentionConfig()`: FAVOR+ with 256 features).
    qkv_features, out_features, causal, dropout_rate, dtype, param_dtype,
      use_bias, kernel_init: as the Linen module's. Dropout is on in
      training mode (the NNX default; `model.eval()` turns it off).
    decode: one call per token (or prefill) on the cache of `init_cache`;
      an attribute, so `set_attributes(decode=True)` switches a trained
      model to decoding.
    rngs: streams "params", "random_features" (default: "params") and, with
      dropout, "dropout" (default: forked from "params").
  """

  def __init__(self, in_features: int, num_heads: int,
               config: AttentionConfig = AttentionConfig(), *,
               qkv_features: int | None = None,
               out_features: int | None = None, causal: bool = False,
               dropout_rate: float = 0.0, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, decode: bool = False,
               use_bias: bool = True,
               kernel_init: Callable = nnx.initializers.xavier_uniform(),
               rngs: nnx.Rngs):
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

  @property
  def config(self) -> AttentionConfig:
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
  `performer_jax.linen.redraw_random_features` draws for the same model's Linen
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
