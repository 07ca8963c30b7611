"""FAVOR+ attention (Choromanski et al. 2021): bidirectional and causal.

With features Q' = phi(Q), K' = phi(K) the output is
`D^-1 (Q' ((K')^T V))`, `D = diag(Q' ((K')^T 1))`. The normalizer is computed
by the same matmuls as the numerator by appending a column of ones to V.

Stabilization (see feature_maps.py for the factored `feats * exp(log_amp)`):
- query amplitudes cancel and are dropped;
- key amplitudes are divided by exp(M), where M is the max key log-amplitude
  over *the keys a query can see*. Bidirectional: one M per (batch, head) over
  the unpadded keys. Causal: M_i = cummax_{j<=i} log_amp_j, a running max, so
  a future key can never change a past output, not even through underflow
  (the leak of the official code and performer-pytorch, which take the max over
  the whole sequence). Pair weights become exp(M_j - M_i) <= 1 inside a chunk
  and exp(E_{n-1} - M_i) <= 1 for the carried state, E_n the max at the end of
  chunk n.

Causal mode works on chunks of C tokens: within a chunk the masked product
tril(Q'_c K'_c^T) V_c, across chunks a carried `[F, Dv+1]` state. That is
O(L (C + F) Dv) work made of matmuls, with no per-token scan, and autodiff
gives exact gradients with memory linear in L.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import feature_maps
from performer_jax.attention import shapes

# Guards for the normalizer D. Non-negative features make D >= 0 and the
# output a convex combination of values, so D only needs keeping off exact
# zero (a query that sees no key); the floor is far below any D that carries
# information yet keeps num / D^2 in the backward pass finite in float32.
# Trigonometric features can make D cross zero: there the official additive
# guard `D + 2 eps [|D| <= eps]` (eps = 1e-6) is used.
POSITIVE_FLOOR = 1e-30
SIGNED_EPS = 1e-6
DEFAULT_CHUNK_SIZE = 64


def normalize(num: jax.Array, den: jax.Array,
               signed_features: bool) -> jax.Array:
  """num / den with den guarded; both are first divided by a stop-gradient
  copy of |den|, which changes nothing in exact arithmetic but keeps the
  backward pass from forming den**2 (it underflows for den ~ 1e-20, which
  large-norm inputs reach, and turns the gradients into NaN)."""
  if signed_features:
    den = den + 2.0 * SIGNED_EPS * (jnp.abs(den) <= SIGNED_EPS).astype(
        den.dtype)
    scale = jnp.maximum(jnp.abs(den), SIGNED_EPS)
  else:
    den = jnp.maximum(den, POSITIVE_FLOOR)
    scale = den
  scale = jax.lax.stop_gradient(scale)
  return (num / scale) / (den / scale)


def _append_ones(v_BLHE: jax.Array) -> jax.Array:
  ones = jnp.ones(v_BLHE.shape[:-1] + (1,), v_BLHE.dtype)
  return jnp.concatenate([v_BLHE, ones], axis=-1)


def _masked_log_amp(log_amp_BLH, key_mask_BL):
  if key_mask_BL is None:
    return log_amp_BLH
  return jnp.where(key_mask_BL[:, :, None], log_amp_BLH, -jnp.inf)


def _finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _bidirectional(qf_BLHF, kf_BSHF, k_amp_BSH, v_BSHE, key_mask_BS):
  if k_amp_BSH is not None:
    amp = _masked_log_amp(k_amp_BSH, key_mask_BS)
    m_B1H = jax.lax.stop_gradient(
        _finite_or_zero(jnp.max(amp, axis=1, keepdims=True)))
    kf_BSHF = kf_BSHF * jnp.exp(k_amp_BSH - m_B1H)[..., None]
  if key_mask_BS is not None:
    kf_BSHF = jnp.where(key_mask_BS[:, :, None, None], kf_BSHF, 0.0)
  kv_BHFE = jnp.einsum("bshf,bshe->bhfe", kf_BSHF, v_BSHE)
  return jnp.einsum("blhf,bhfe->blhe", qf_BLHF, kv_BHFE)


def _prefix_states(t_NBHFE, decay_NBH):
  """Exclusive prefix of chunk states: P_n = sum_{n'<n} T_n' (rescaled)."""
  def step(carry_BHFE, inputs):
    t_BHFE, decay_BH = inputs
    # The emitted prefix stays relative to the previous chunk's end max; the
    # carry moves on to this chunk's end max.
    return carry_BHFE * decay_BH[..., None, None] + t_BHFE, carry_BHFE
  init = jnp.zeros_like(t_NBHFE[0])
  _, prefix_NBHFE = jax.lax.scan(step, init, (t_NBHFE, decay_NBH))
  return prefix_NBHFE


def _causal(qf_BLHF, kf_BLHF, k_amp_BLH, v_BLHE, key_mask_BL, chunk_size):
  b, length, h, f = qf_BLHF.shape
  e = v_BLHE.shape[-1]
  c = min(chunk_size, length)
  n = -(-length // c)
  pad = n * c - length
  if key_mask_BL is None and pad:
    key_mask_BL = jnp.ones((b, length), bool)
  if pad:
    pad_fn = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    qf_BLHF, kf_BLHF, v_BLHE, key_mask_BL = map(
        pad_fn, (qf_BLHF, kf_BLHF, v_BLHE, key_mask_BL))
    if k_amp_BLH is not None:
      k_amp_BLH = pad_fn(k_amp_BLH)
  if key_mask_BL is not None:
    kf_BLHF = jnp.where(key_mask_BL[:, :, None, None], kf_BLHF, 0.0)

  chunked = lambda x: x.reshape((b, n, c) + x.shape[2:])
  qf = chunked(qf_BLHF)        # [B, N, C, H, F]
  v = chunked(v_BLHE)          # [B, N, C, H, E]
  causal_CC = jnp.tril(jnp.ones((c, c), bool))

  if k_amp_BLH is None:
    kf = chunked(kf_BLHF)
    scores = jnp.einsum("bnihf,bnjhf->bnhij", qf, kf)
    scores = jnp.where(causal_CC, scores, 0.0)
    t = jnp.einsum("bnjhf,bnjhe->nbhfe", kf, v)
    decay_NBH = jnp.ones((n, b, h), jnp.float32)
    prefix = _prefix_states(t, decay_NBH)
    inter = jnp.einsum("bnihf,nbhfe->bnihe", qf, prefix)
  else:
    amp = _masked_log_amp(k_amp_BLH, key_mask_BL)
    # Running max over the keys seen so far: depends on no future key.
    run_BLH = jax.lax.stop_gradient(jax.lax.cummax(amp, axis=1))
    run_BLH = _finite_or_zero(run_BLH)
    kf = chunked(kf_BLHF * jnp.exp(
        jnp.minimum(k_amp_BLH - run_BLH, 0.0))[..., None])
    run = chunked(run_BLH)     # [B, N, C, H]
    end_BNH = run[:, :, -1]
    prev_end_BNH = jnp.concatenate([end_BNH[:, :1], end_BNH[:, :-1]], axis=1)
    # exp(M_j - M_i) for j <= i; the minimum guards the (masked) j > i entries
    # and the zero-substituted prefix of fully padded positions.
    pair_BNHIJ = jnp.exp(jnp.minimum(
        run.transpose(0, 1, 3, 2)[..., None, :] -
        run.transpose(0, 1, 3, 2)[..., :, None], 0.0))
    scores = jnp.einsum("bnihf,bnjhf->bnhij", qf, kf)
    scores = jnp.where(causal_CC, scores * pair_BNHIJ, 0.0)
    to_end = jnp.exp(jnp.minimum(run - end_BNH[:, :, None], 0.0))
    t = jnp.einsum("bnjhf,bnjhe->nbhfe", kf * to_end[..., None], v)
    decay = jnp.exp(jnp.minimum(prev_end_BNH - end_BNH, 0.0))
    prefix = _prefix_states(t, decay.transpose(1, 0, 2))
    from_prev = jnp.exp(jnp.minimum(prev_end_BNH[:, :, None] - run, 0.0))
    inter = jnp.einsum("bnihf,nbhfe->bnihe", qf * from_prev[..., None],
                       prefix)
  intra = jnp.einsum("bnhij,bnjhe->bnihe", scores, v)
  out = (intra + inter).reshape(b, n * c, h, e)
  return out[:, :length]


@functools.partial(jax.named_call, name="favor_attention")
def favor_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                    projection: jax.Array | None, *,
                    kernel: str | feature_maps.FeatureFn = "softmax",
                    causal: bool = False,
                    key_mask: jax.Array | None = None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """FAVOR+ approximation of `softmax_attention(query, key, value)`.

  Args:
    query: `[batch..., L, H, D]`.
    key: `[batch..., S, H, D]` (S == L when causal).
    value: `[batch..., S, H, Dv]`.
    projection: `[M, D]` random features from
      `gaussian_orthogonal_random_matrix`, shared by all heads; None only for
      kernel "relu" (the deterministic `relu(x) + eps` features) or a user
      function that needs none.
    kernel: "softmax" (positive features, default), "softmax_hyperbolic",
      "softmax_trig", "relu", or a function `(x [..., D], projection) ->
      features [..., F] >= 0`. x is pre-scaled by `D^(-1/4)`. Features must
      be non-negative except for "softmax_trig".
    causal: query i sees keys j <= i only.
    key_mask: bool `[batch..., S]`, True = attend. Padded keys are removed from
      the numerator and the normalizer whatever they contain.
    chunk_size: C, tokens per chunk in causal mode. Work per token grows with
      C (the intra-chunk product), per-chunk overhead shrinks with it.

  Returns:
    `[batch..., L, H, Dv]` in the inputs' dtype. Features, exp, normalizer and
    all accumulation are float32.
  """
  shapes.check_qkv(query, key, value, key_mask, name="favor_attention")
  if causal and query.shape[-3] != key.shape[-3]:
    raise ValueError(
        "favor_attention: causal mode needs q_len == kv_len (self-attention), "
        f"got query {query.shape} and key {key.shape}. For token-by-token "
        "decoding use performer_jax.nn.MultiHeadAttention(decode=True).")
  if projection is not None and (projection.ndim != 2 or
                                 projection.shape[-1] != query.shape[-1]):
    raise ValueError(
        f"favor_attention: projection must be [num_features, head_dim="
        f"{query.shape[-1]}], got {projection.shape}.")
  if int(chunk_size) <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
  out_dtype = shapes.output_dtype(query, value)
  q_BLHD, batch_shape = shapes.flatten_batch(query, 3)
  k_BSHD, _ = shapes.flatten_batch(key, 3)
  v_BSHD, _ = shapes.flatten_batch(value, 3)
  km_BS = None if key_mask is None else shapes.flatten_batch(key_mask, 1)[0]
  k_BSHD = shapes.sanitize_padding(k_BSHD, km_BS)
  v_BSHD = shapes.sanitize_padding(v_BSHD, km_BS)

  proj = None if projection is None else jax.lax.stop_gradient(
      projection.astype(jnp.float32))
  feature_fn = feature_maps.resolve(kernel, proj)
  data_normalizer = query.shape[-1] ** -0.25
  qf_BLHF, _ = feature_fn(q_BLHD.astype(jnp.float32) * data_normalizer)
  kf_BSHF, k_amp_BSH = feature_fn(k_BSHD.astype(jnp.float32) *
                                  data_normalizer)
  v_BSHE = _append_ones(v_BSHD.astype(jnp.float32))
  if causal:
    out_BLHE = _causal(qf_BLHF, kf_BSHF, k_amp_BSH, v_BSHE, km_BS,
                       int(chunk_size))
  else:
    out_BLHE = _bidirectional(qf_BLHF, kf_BSHF, k_amp_BSH, v_BSHE, km_BS)
  out_BLHD = normalize(out_BLHE[..., :-1], out_BLHE[..., -1:],
                        signed_features=kernel == "softmax_trig")
  return out_BLHD.reshape(batch_shape + out_BLHD.shape[1:]).astype(out_dtype)
