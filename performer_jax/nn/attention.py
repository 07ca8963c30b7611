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
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.attention import decoding
from performer_jax.attention import feature_maps
from performer_jax.attention import random_features
from performer_jax.config.sections import AttentionConfig

ATTENTION_KINDS = api.ATTENTION_KINDS
EXACT_FUNCTIONS = {"softmax": api.softmax_attention,
                   "l2": api.l2_attention}
RF_COLLECTION = "random_features"
QKV_AXES = ("embed", "heads", "kv")
OUT_AXES = ("heads", "kv", "embed")


def _logical(init, axes):
  return nn.with_logical_partitioning(init, axes)


class HeadKernel(nn.Module):
  """A bare `[in, heads, head_dim]` kernel, for L2's tied weights."""
  heads: int
  head_dim: int
  kernel_init: Callable
  param_dtype: Any

  @nn.compact
  def __call__(self, in_features: int) -> jax.Array:
    return self.param("kernel", _logical(self.kernel_init, QKV_AXES),
                      (in_features, self.heads, self.head_dim),
                      self.param_dtype)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with a choice of softmax, FAVOR+ or L2 attention.

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
      kernel on the CPU backend when built, else "slim"), "kernel", "slim"
      (recompute inside each chunk: sub-linear memory) or "autodiff" (see
      `favor_attention`).
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
    return cls(attention=config.kind, kernel=config.kernel,
               num_features=config.num_features,
               orthogonal=config.orthogonal, scaling=config.scaling,
               chunk_size=config.chunk_size,
               implementation=config.implementation, **kwargs)

  def attention_config(self) -> AttentionConfig:
    """These attributes as a checked AttentionConfig (the one place their
    values are validated, for modules and configs alike)."""
    return _ModuleAttention(
        kind=self.attention, kernel=self.kernel,
        num_features=self.num_features, orthogonal=self.orthogonal,
        scaling=self.scaling, chunk_size=self.chunk_size,
        implementation=self.implementation)

  def _check_fields(self) -> AttentionConfig:
    if self.decode and not self.causal:
      raise ValueError("decode=True needs causal=True: only autoregressive "
                       "models decode token by token.")
    return self.attention_config()

  def _projection(self, config: AttentionConfig,
                  head_dim: int) -> jax.Array | None:
    if not config.uses_projection:
      return None
    def draw():
      # Without a dedicated rng the projection is derived from the params rng,
      # so `model.init(key, x)` still works and is reproducible by seed.
      name = RF_COLLECTION if self.has_rng(RF_COLLECTION) else "params"
      return random_features.gaussian_orthogonal_random_matrix(
          self.make_rng(name), self.num_features, head_dim,
          scaling=self.scaling, orthogonal=self.orthogonal)
    return self.variable(RF_COLLECTION, "projection", draw).value

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
    config = self._check_fields()
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    in_features = inputs_q.shape[-1]
    features = self.qkv_features or in_features
    if features % self.num_heads:
      raise ValueError(f"qkv_features={features} must be divisible by "
                       f"num_heads={self.num_heads}.")
    head_dim = features // self.num_heads
    dense = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, head_dim), axis=-1,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_logical(self.kernel_init, QKV_AXES),
        bias_init=_logical(nn.initializers.zeros_init(), QKV_AXES[1:]),
        use_bias=self.use_bias)

    if self.attention == "l2":
      head_kernel = functools.partial(HeadKernel, self.num_heads, head_dim,
                                      self.kernel_init, self.param_dtype)
      wq_DHK = head_kernel(name="query")(in_features).astype(self.dtype)
      wv_DHK = head_kernel(name="value")(in_features).astype(self.dtype)
      q = jnp.einsum("bld,dhk->blhk", inputs_q.astype(self.dtype), wq_DHK)
      k = jnp.einsum("bld,dhk->blhk", inputs_kv.astype(self.dtype), wq_DHK)
      v = k  # P_h (X W_Q,h); A_h's second factor is applied below.
    else:
      q = dense(name="query")(inputs_q)
      k = dense(name="key")(inputs_kv)
      v = dense(name="value")(inputs_kv)

    projection = self._projection(config, head_dim)
    if self.decode and not self.is_initializing():
      if key_mask is not None:
        raise ValueError("key_mask is not supported while decoding; decode "
                         "only real tokens.")
      x = self._decode_step(q, k, v, projection)
    elif self.attention == "favor":
      x = api.favor_attention(q, k, v, projection, kernel=self.kernel,
                                causal=self.causal, key_mask=key_mask,
                                chunk_size=self.chunk_size,
                                implementation=self.implementation)
    else:
      x = EXACT_FUNCTIONS[self.attention](q, k, v, causal=self.causal,
                                          key_mask=key_mask)
    if self.decode and self.is_initializing():
      self._init_cache(k, v, projection)

    if self.attention == "l2":
      # (P_h X W_Q,h) (W_Q,h^T W_V,h) / sqrt(D/H) = P_h X A_h W_V,h.
      qv_HKV = jnp.einsum("dhk,dhv->hkv", wq_DHK, wv_DHK) / math.sqrt(head_dim)
      x = jnp.einsum("blhk,hkv->blhv", x.astype(self.dtype), qv_HKV)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    return nn.DenseGeneral(
        features=self.out_features or in_features, axis=(-2, -1),
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_logical(self.kernel_init, OUT_AXES),
        bias_init=_logical(nn.initializers.zeros_init(), OUT_AXES[-1:]),
        use_bias=self.use_bias, name="out")(x.astype(self.dtype))

  # Decoding: the cache is created by `init` on a full-length input, which
  # fixes max_len (KV cache) and the batch size.
  def _init_cache(self, k_BLHD, v_BLHD, projection):
    b, max_len, h, _ = k_BLHD.shape
    self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if self.attention == "favor":
      num_features = self._feature_dim(k_BLHD, projection)
      init = decoding.init_favor_state(b, h, num_features, v_BLHD.shape[-1])
      for name, value in init.items():
        self.variable("cache", name, lambda value=value: value)
    else:
      self.variable("cache", "cached_key", jnp.zeros, k_BLHD.shape,
                    k_BLHD.dtype)
      self.variable("cache", "cached_value", jnp.zeros, v_BLHD.shape,
                    v_BLHD.dtype)

  def _feature_dim(self, k_BLHD, projection) -> int:
    fn = feature_maps.resolve(self.kernel, projection)
    return jax.eval_shape(lambda x: fn(x)[0], k_BLHD[:, :1].astype(
        jnp.float32)).shape[-1]

  def _decode_step(self, q, k, v, projection):
    if q.shape[1] != 1:
      raise ValueError(f"decode mode takes one token at a time, got inputs of "
                       f"length {q.shape[1]}.")
    if not self.has_variable("cache", "cache_index"):
      raise ValueError("decode=True needs a cache: call init with a full-length "
                       "input [batch, max_len, features] first.")
    index = self.variable("cache", "cache_index", None)
    if self.attention == "favor":
      names = ("sums", "max_amp")
      cache = {n: self.variable("cache", n, None) for n in names}
      out_BHD, state = decoding.favor_decode_step(
          q[:, 0], k[:, 0], v[:, 0], {n: c.value for n, c in cache.items()},
          projection, kernel=self.kernel)
      for name in names:
        cache[name].value = state[name]
      index.value = index.value + 1
      return out_BHD[:, None]
    cached_k = self.variable("cache", "cached_key", None)
    cached_v = self.variable("cache", "cached_value", None)
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(
        cached_k.value, k.astype(cached_k.value.dtype), (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(
        cached_v.value, v.astype(cached_v.value.dtype), (0, i, 0, 0))
    b, max_len = cached_k.value.shape[:2]
    visible_BL = jnp.broadcast_to(jnp.arange(max_len) <= i, (b, max_len))
    index.value = i + 1
    kwargs = {"keep_self": False} if self.attention == "l2" else {}
    return EXACT_FUNCTIONS[self.attention](
        q, cached_k.value, cached_v.value, key_mask=visible_BL, **kwargs)


class _ModuleAttention(AttentionConfig):
  """AttentionConfig whose messages name the module's attributes."""

  @classmethod
  def key(cls, name: str) -> str:
    attribute = "attention" if name == "kind" else name
    return f"MultiHeadAttention({attribute}=...)"


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
  new_leaves = []
  for i, leaf in enumerate(leaves):
    *lead, m, d = leaf.shape
    keys = jax.random.split(jax.random.fold_in(rng, i), math.prod(lead))
    draw = jax.vmap(lambda key, m=m, d=d: (
        random_features.gaussian_orthogonal_random_matrix(
            key, m, d, scaling=scaling, orthogonal=orthogonal)))
    new_leaves.append(draw(keys).reshape(leaf.shape).astype(leaf.dtype))
  return {**variables,
          RF_COLLECTION: jax.tree_util.tree_unflatten(treedef, new_leaves)}
