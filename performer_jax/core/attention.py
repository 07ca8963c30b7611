"""The per-call math of `MultiHeadAttention`, written once for Linen and NNX.

Both modules only own variables (the weights `AttentionCore.weight_specs`
lists, the random features, the decoding cache) and hand them to
`AttentionCore.__call__`, a pure function of arrays, so the two APIs compute
the same function of the same weights. Weights are `{name: {"kernel",
"bias"}}` with the Linen tree's names and shapes: "query"/"key"/"value"
kernels `[D, H, Dh]`, biases `[H, Dh]`, "out" `[H, Dh, O]` and `[O]`; L2 has
no "key" and no q/k/v biases (W_K = W_Q).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.attention import feature_maps
from performer_jax.attention import incremental
from performer_jax.attention import random_features
from performer_jax.attention import sequence
from performer_jax.core import sharding
from performer_jax.schemas.sections import AttentionConfig

EXACT_FUNCTIONS = {"softmax": api.softmax_attention,
                   "l2": api.l2_attention}
QKV_AXES = ("embed", "heads", "kv")
OUT_AXES = ("heads", "kv", "embed")
CACHE_INDEX = "cache_index"
FAVOR_CACHE = (CACHE_INDEX, "sums", "max_amp")
KV_CACHE = (CACHE_INDEX, "cached_key", "cached_value")

Weights = Mapping[str, Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class WeightSpec:
  """One projection: `<name>/kernel` and, with `use_bias`, `<name>/bias`.

  The kernel contracts its first `contract` axes with the input's last ones;
  the bias has the kernel's remaining (output) axes. With `flat_init` the
  initializer sees the kernel as a `[fan_in, fan_out]` matrix (as
  `nn.DenseGeneral` does), otherwise its own shape (L2's head kernels).
  """
  name: str
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  contract: int
  use_bias: bool
  flat_init: bool = True

  @property
  def bias_shape(self) -> tuple[int, ...]:
    return self.kernel_shape[self.contract:]

  @property
  def bias_axes(self) -> tuple[str, ...]:
    return self.kernel_axes[self.contract:]

  def init_kernel(self, kernel_init: Callable, rng: jax.Array,
                  dtype: Any) -> jax.Array:
    if not self.flat_init:
      return kernel_init(rng, self.kernel_shape, dtype)
    fan = (math.prod(self.kernel_shape[:self.contract]),
           math.prod(self.kernel_shape[self.contract:]))
    return jnp.reshape(kernel_init(rng, fan, dtype), self.kernel_shape)

  def init_bias(self, dtype: Any) -> jax.Array:
    return jnp.zeros(self.bias_shape, dtype)


def dense(weights: Mapping[str, jax.Array], x: jax.Array, contract: int,
          dtype: Any) -> jax.Array:
  """`nn.DenseGeneral`'s product: x's last `contract` axes times the
  kernel's first ones, plus the bias; everything cast to `dtype` first."""
  kernel = jnp.asarray(weights["kernel"], dtype)
  x = jnp.asarray(x, dtype)
  dims = (tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract)))
  y = jax.lax.dot_general(
      x, kernel, (dims, ((), ())),
      out_sharding=sharding.product_sharding(x, kernel, contract))
  if weights.get("bias") is not None:
    bias = jnp.asarray(weights["bias"], dtype)
    y += jnp.reshape(bias, (1,) * (y.ndim - bias.ndim) + bias.shape)
  return y


def check_decode(decode: bool, causal: bool) -> None:
  if decode and not causal:
    raise ValueError("decode=True needs causal=True: only autoregressive "
                     "models decode token by token.")


@dataclasses.dataclass(frozen=True)
class AttentionCore:
  """The static shape of one attention layer and its per-call math.

  Attributes:
    config: the checked attention attributes (kind, kernel, features, ...).
    in_features: D, the input width.
    num_heads: H.
    head_dim: Dh = qkv_features / H.
    out_features: O.
    causal: autoregressive masking.
    use_bias: q/k/v and out biases (L2's q/v kernels never have one).
    dtype: compute dtype of the projections (attention math is float32).
  """
  config: AttentionConfig
  in_features: int
  num_heads: int
  head_dim: int
  out_features: int
  causal: bool
  use_bias: bool
  dtype: Any

  @classmethod
  def create(cls, config: AttentionConfig, *, in_features: int,
             num_heads: int, qkv_features: int | None,
             out_features: int | None, causal: bool, decode: bool,
             use_bias: bool, dtype: Any) -> "AttentionCore":
    """Checks a module's attributes; None widths default to in_features."""
    if not isinstance(config, AttentionConfig):
      raise TypeError("MultiHeadAttention(config=...) takes an "
                      f"AttentionConfig (performer_jax.schemas), got "
                      f"{config!r}")
    check_decode(decode, causal)
    features = qkv_features or in_features
    if features % num_heads:
      raise ValueError(f"qkv_features={features} must be divisible by "
                       f"num_heads={num_heads}.")
    return cls(config, in_features, num_heads, features // num_heads,
               out_features or in_features, causal, use_bias, dtype)

  @property
  def kind(self) -> str:
    return self.config.kind

  def weight_specs(self) -> tuple[WeightSpec, ...]:
    """The projections the module must own, in the Linen tree's order."""
    qkv_shape = (self.in_features, self.num_heads, self.head_dim)
    out = WeightSpec("out", (self.num_heads, self.head_dim,
                             self.out_features), OUT_AXES, 2, self.use_bias)
    if self.kind == "l2":
      return (WeightSpec("query", qkv_shape, QKV_AXES, 1, False, False),
              WeightSpec("value", qkv_shape, QKV_AXES, 1, False, False), out)
    return tuple(WeightSpec(name, qkv_shape, QKV_AXES, 1, self.use_bias)
                 for name in ("query", "key", "value")) + (out,)

  def draw_projection(self, rng: jax.Array) -> jax.Array | None:
    """float32 `[num_features, Dh]` FAVOR+ features, or None if unused."""
    if not self.config.uses_projection:
      return None
    return random_features.gaussian_orthogonal_random_matrix(
        rng, self.config.num_features, self.head_dim,
        scaling=self.config.scaling, orthogonal=self.config.orthogonal)

  def __call__(self, weights: Weights, projection: jax.Array | None,
               inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *,
               key_mask: jax.Array | None = None,
               dropout: Callable[[jax.Array], jax.Array] | None = None,
               cache: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Attends from `inputs_q [B, Lq, D]` to `inputs_kv [B, Lk, D]`.

    Args:
      weights: as `weight_specs` lists them.
      projection: float32 `[num_features, Dh]` or None.
      inputs_q, inputs_kv: the inputs (keys/values from inputs_q if None).
      key_mask: bool `[B, Lk]`, True = attend. Padded inputs are zeroed
        before the projections, and in self-attention the mask marks the
        padded queries too (their outputs are 0): whatever padded rows hold,
        even NaN, cannot reach the outputs or gradients of real tokens.
      dropout: applied to the concatenated head outputs `[B, Lq, H, Dh]`.
      cache: a decoding cache: the call then feeds Lq new tokens (one
        decode step, or a prompt's prefill) and advances it.

    Returns:
      (`[B, Lq, O]` in `dtype`, the advanced cache or None).
    """
    query_mask, self_attention = None, inputs_kv is None
    if key_mask is not None:
      pad = lambda x, m: jnp.where(m[..., None], x, jnp.zeros((), x.dtype))
      if inputs_kv is None:  # self-attention: the queries are padded too
        query_mask = key_mask
        inputs_q = pad(inputs_q, key_mask)
      else:
        inputs_kv = pad(inputs_kv, key_mask)
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    q, k, v = self._qkv(weights, inputs_q, inputs_kv)
    new_cache = None
    if cache is not None:
      if key_mask is not None:
        raise ValueError("key_mask is not supported while decoding; decode "
                         "only real tokens.")
      x, new_cache = self.decode_step(q, k, v, cache, projection)
    else:
      if self.kind == "favor":
        c = self.config
        attend = functools.partial(
            api.favor_attention, kernel=c.kernel, chunk_size=c.chunk_size,
            implementation=c.implementation)
        extra = (projection,)
      else:
        attend, extra = EXACT_FUNCTIONS[self.kind], ()
      seq_sharding = sequence.current_sequence_sharding()
      if seq_sharding is not None and self_attention:
        attend = seq_sharding.wrap(attend)
      x = attend(q, k, v, *extra, causal=self.causal, key_mask=key_mask,
                 query_mask=query_mask)
    if self.kind == "l2":
      # (P_h X W_Q,h) (W_Q,h^T W_V,h) / sqrt(D/H) = P_h X A_h W_V,h.
      wq_DHK, wv_DHK = (weights[n]["kernel"].astype(self.dtype)
                        for n in ("query", "value"))
      qv_HKV = jnp.einsum("dhk,dhv->hkv", wq_DHK, wv_DHK) / math.sqrt(
          self.head_dim)
      x = jnp.einsum("blhk,hkv->blhv", x.astype(self.dtype), qv_HKV)
    if dropout is not None:
      x = dropout(x)
    return dense(weights["out"], x.astype(self.dtype), 2,
                 self.dtype), new_cache

  def _qkv(self, weights, inputs_q, inputs_kv):
    if self.kind != "l2":
      return tuple(dense(weights[name], x, 1, self.dtype) for name, x in (
          ("query", inputs_q), ("key", inputs_kv), ("value", inputs_kv)))
    wq_DHK = weights["query"]["kernel"].astype(self.dtype)
    q = jnp.einsum("bld,dhk->blhk", inputs_q.astype(self.dtype), wq_DHK)
    k = jnp.einsum("bld,dhk->blhk", inputs_kv.astype(self.dtype), wq_DHK)
    return q, k, k  # v = P_h (X W_Q,h); A_h's second factor comes later.

  # Decoding. FAVOR+ keeps a constant-size prefix-sum state; softmax and L2
  # keep every key and value of the sequence so far.
  def cache_names(self) -> tuple[str, ...]:
    return FAVOR_CACHE if self.kind == "favor" else KV_CACHE

  def init_cache(self, batch_size: int, max_len: int,
                 projection: Any) -> dict[str, jax.Array]:
    """A fresh cache for `batch_size` sequences of up to `max_len` tokens;
    `projection` (an array or its shape and dtype) sizes FAVOR+'s state."""
    cache = {CACHE_INDEX: jnp.zeros((), jnp.int32)}
    shape = (batch_size, max_len, self.num_heads, self.head_dim)
    if self.kind == "favor":
      cache.update(incremental.init_favor_state(
          batch_size, self.num_heads, self._feature_dim(projection),
          self.head_dim))
    else:
      cache["cached_key"] = jnp.zeros(shape, self.dtype)
      cache["cached_value"] = jnp.zeros(shape, self.dtype)
    return cache

  def _feature_dim(self, projection) -> int:
    x = jax.ShapeDtypeStruct((1, self.num_heads, self.head_dim), jnp.float32)
    if projection is None:
      return jax.eval_shape(
          lambda x: feature_maps.resolve(self.config.kernel, None)(x)[0],
          x).shape[-1]
    proj = jax.ShapeDtypeStruct(projection.shape[-2:], jnp.float32)
    return jax.eval_shape(
        lambda x, p: feature_maps.resolve(self.config.kernel, p)(x)[0],
        x, proj).shape[-1]

  def decode_step(self, q, k, v, cache, projection):
    """L >= 1 new tokens `[B, L, H, Dh]` against the cache -> (`[B, L, H,
    Dh]`, the advanced cache). One token is one recurrence step; several
    (a prompt's prefill) are one causal pass that fills the cache."""
    i = cache[CACHE_INDEX]
    length = q.shape[1]
    if self.kind == "favor":
      state = {"sums": cache["sums"], "max_amp": cache["max_amp"]}
      if length == 1:
        out_BHD, state = incremental.favor_decode_step(
            q[:, 0], k[:, 0], v[:, 0], state, projection,
            kernel=self.config.kernel)
        x = out_BHD[:, None]
      else:
        x, state = incremental.favor_extend(
            q, k, v, state, projection, kernel=self.config.kernel,
            chunk_size=self.config.chunk_size,
            implementation=self.config.implementation)
      return x, {CACHE_INDEX: i + length, **state}
    if length > cache["cached_key"].shape[1]:
      raise ValueError(f"{length} tokens do not fit a decoding cache of "
                       f"{cache['cached_key'].shape[1]} positions; create the "
                       "cache with a larger max_len.")
    x, cached_k, cached_v = incremental.kv_extend(
        q, k, v, cache["cached_key"], cache["cached_value"], i,
        kind=self.kind)
    return x, {CACHE_INDEX: i + length, "cached_key": cached_k,
               "cached_value": cached_v}


def redraw_leaves(leaves: list[jax.Array], rng: jax.Array, *,
                  orthogonal: bool = True,
                  scaling: str = "chi") -> list[jax.Array]:
  """New draws for random-feature projections `[..., M, Dh]`.

  Leaf i gets the key `fold_in(rng, i)`, and leading axes (stacked layers)
  an independent draw per index, so no two layers share features.
  """
  new_leaves = []
  for i, leaf in enumerate(leaves):
    *lead, m, d = leaf.shape
    keys = jax.random.split(jax.random.fold_in(rng, i), math.prod(lead))
    draw = jax.vmap(lambda key, m=m, d=d: (
        random_features.gaussian_orthogonal_random_matrix(
            key, m, d, scaling=scaling, orthogonal=orthogonal)))
    new_leaves.append(draw(keys).reshape(leaf.shape).astype(leaf.dtype))
  return new_leaves
