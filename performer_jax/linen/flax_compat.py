"""A drop-in FAVOR+ `attention_fn` for Flax's Linen and NNX attention modules.

Flax passes a dense mask `[batch..., H or 1, Lq, Lk]` (NNX also `is_causal`).
FAVOR+ never forms the attention matrix, so only masks of the form
`key_padding & (causal tril if causal)` are honoured (padded query rows may
be all False). Anything else (an arbitrary mask, additive bias, attention
dropout, sown weights) raises rather than being ignored: at trace time, or
for a traced mask at run time (`_checked`). A causal call with fewer queries
than keys (Flax's `decode=True`) is refused: this library's
`MultiHeadAttention` modules decode FAVOR+ from a constant-size state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from performer_jax.attention import api
from performer_jax.attention import feature_maps


def _implied_mask(mask: jax.Array, causal: bool):
  """(key_mask [batch..., Lk], the dense mask that key_mask would imply)."""
  any_head = mask.any(axis=-3)                      # [batch..., Lq, Lk]
  row_valid = any_head.any(axis=-1, keepdims=True)  # padded queries: False
  key_mask = any_head.any(axis=-2)                  # [batch..., Lk]
  implied = key_mask[..., None, :] & row_valid
  if causal:
    q_len, kv_len = mask.shape[-2:]
    implied = implied & jnp.tril(jnp.ones((q_len, kv_len), bool))
  return key_mask, implied[..., None, :, :]


def _raise_if(bad, causal):
  if np.any(bad):
    kind = "key-padding & causal" if causal else "key-padding"
    raise ValueError(
        f"make_favor_attention_fn(causal={causal}) can only honour a "
        f"{kind} mask (e.g. flax.linen.make_attention_mask(q_pad, k_pad)"
        f"{' & make_causal_mask' if causal else ''}); it was given a mask of "
        "another form, which FAVOR+ cannot represent. Pass causal=True (or "
        "call NNX's MultiHeadAttention with is_causal=True) for a causal "
        "mask, or use exact attention for arbitrary masks.")


def _has_cpu_platform() -> bool:
  try:
    return bool(jax.devices("cpu"))
  except RuntimeError:
    return False


def _checked(out: jax.Array, bad: jax.Array, causal: bool) -> jax.Array:
  """`out`, once the host has seen that `bad` (a traced bool) is False.

  A `pure_callback` (not `jax.debug.callback`, whose errors on GPU are only
  logged) raises on the host, and the computation fails with that message on
  every backend; its float32 1.0 multiplies `out`, so the check cannot be
  pruned and runs before `out` is used. It has no effects, so it composes
  with jit, vmap, grad, remat and scan. Host callbacks need the CPU platform:
  without it (JAX_PLATFORMS=cuda alone) the call is refused at trace time.
  """
  if not _has_cpu_platform():
    raise ValueError(
        "make_favor_attention_fn checks a traced mask on the host, which needs "
        "the CPU platform: list it (e.g. JAX_PLATFORMS=cuda,cpu), or pass "
        "check_mask=False if every mask is key-padding (& causal).")

  def host_check(bad_np):
    _raise_if(bad_np, causal)
    return np.ones(np.shape(bad_np), np.float32)

  one = jax.pure_callback(host_check, jax.ShapeDtypeStruct((), jnp.float32),
                          bad, vmap_method="expand_dims")
  return out * one.astype(out.dtype)


def make_favor_attention_fn(projection: jax.Array | None, *,
                            kernel: str | feature_maps.FeatureFn = "softmax",
                            causal: bool = False,
                            chunk_size: int = api.DEFAULT_CHUNK_SIZE,
                            implementation: str = "auto",
                            check_mask: bool = True):
  """Returns an `attention_fn` running FAVOR+ with a fixed projection.

  Usage: `nn.MultiHeadDotProductAttention(num_heads=4,
  attention_fn=make_favor_attention_fn(proj, causal=True))`, or
  `nnx.MultiHeadAttention(4, 64, attention_fn=make_favor_attention_fn(proj),
  rngs=rngs)` called with `is_causal=True` for causal attention.

  Args:
    projection: `[M, head_dim]` from `gaussian_orthogonal_random_matrix`.
    kernel: as `favor_attention`.
    causal: build causal FAVOR+; a causal Flax mask is then accepted. A call
      with `is_causal=True` (NNX) is causal too.
    chunk_size: causal chunk length.
    implementation: as `favor_attention`.
    check_mask: verify that a given mask has a representable form (a traced
      mask costs one host round trip per call; see `_checked`).
  """

  def attention_fn(query, key, value, bias=None, mask=None,
                   broadcast_dropout=True, dropout_rng=None,
                   dropout_rate=0.0, deterministic=False, dtype=None,
                   precision=None, module=None, is_causal=False, **unused):
    del broadcast_dropout, dropout_rng, precision
    if unused:
      raise ValueError("FAVOR+ attention_fn got unsupported arguments "
                       f"{sorted(unused)}.")
    causal_call = causal or bool(is_causal)
    if causal_call and query.shape[-3] != key.shape[-3]:
      raise ValueError(
          f"causal FAVOR+ got {query.shape[-3]} queries against "
          f"{key.shape[-3]} keys: this is a decoding step against a key-value "
          "cache (flax's decode=True), which cannot serve causal FAVOR+. "
          "Decode with performer_jax.nnx.MultiHeadAttention(decode=True) "
          "(NNX) or performer_jax.linen.MultiHeadAttention(decode=True) (Linen), "
          "which keep FAVOR+'s constant-size decoding state.")
    if module is not None:
      raise ValueError("FAVOR+ never forms attention weights, so it cannot "
                       "sow them; set sow_weights=False.")
    if bias is not None:
      raise ValueError("FAVOR+ cannot add an attention bias (it never forms "
                       "the attention matrix); remove the bias or use exact "
                       "attention.")
    if dropout_rate > 0.0 and not deterministic:
      raise ValueError(
          f"FAVOR+ cannot apply attention dropout (dropout_rate={dropout_rate})"
          ": there is no attention matrix. Set dropout_rate=0 on "
          "MultiHeadDotProductAttention and add dropout after it.")
    key_mask = bad = None
    if mask is not None:
      expected = query.shape[:-3] + (query.shape[-3], key.shape[-3])
      if mask.ndim != query.ndim or mask.shape[-2:] != expected[-2:]:
        raise ValueError(
            f"mask must have shape [batch..., heads or 1, q_len, kv_len] "
            f"matching {expected}, got {mask.shape}.")
      mask = jnp.broadcast_to(mask.astype(bool), query.shape[:-3] +
                              mask.shape[-3:])
      key_mask, implied = _implied_mask(mask, causal_call)
      if check_mask:
        bad = jnp.any(implied != mask)
        if not isinstance(bad, jax.core.Tracer):
          _raise_if(np.asarray(bad), causal_call)
          bad = None
    out = api.favor_attention(query, key, value, projection, kernel=kernel,
                              causal=causal_call, key_mask=key_mask,
                              chunk_size=chunk_size,
                              implementation=implementation)
    if bad is not None:
      out = _checked(out, bad, causal_call)
    return out if dtype is None else out.astype(dtype)

  return attention_fn
