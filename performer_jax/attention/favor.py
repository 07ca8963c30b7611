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

from performer_jax.attention import bidirectional
from performer_jax.attention import causal_cpu
from performer_jax.attention import feature_maps
from performer_jax.attention import shapes
from performer_jax.attention import slim

DEFAULT_CHUNK_SIZE = slim.DEFAULT_CHUNK_SIZE
IMPLEMENTATIONS = ("auto", "slim", "autodiff", "kernel")
# Kernels whose bidirectional "slim" path is bidirectional.fused_favor.
FUSED_BIDIRECTIONAL = ("softmax", "softmax_hyperbolic")
normalize = feature_maps.normalize  # Re-exported for callers of favor.

def _append_ones(v_BLHE: jax.Array) -> jax.Array:
  ones = jnp.ones(v_BLHE.shape[:-1] + (1,), v_BLHE.dtype)
  return jnp.concatenate([v_BLHE, ones], axis=-1)


def _masked_log_amp(log_amp_BHL, key_mask_BL):
  if key_mask_BL is None:
    return log_amp_BHL
  return jnp.where(key_mask_BL[:, None, :], log_amp_BHL, -jnp.inf)


def _finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, 0.0)


# Everything below works heads-major, [B, H, L, ...]: (b, h) then lead every
# einsum as batch dimensions, so XLA runs plain batched matmuls instead of
# transposing the [L, F] feature tensors around each product (about 1.7x
# faster fwd+bwd on CPU at L=4096).


def _bidirectional(qf_BHLF, kf_BHSF, k_amp_BHS, v_BHSE, key_mask_BS):
  if k_amp_BHS is not None:
    amp = _masked_log_amp(k_amp_BHS, key_mask_BS)
    m_BH1 = jax.lax.stop_gradient(
        _finite_or_zero(jnp.max(amp, axis=2, keepdims=True)))
    kf_BHSF = kf_BHSF * jnp.exp(k_amp_BHS - m_BH1)[..., None]
  if key_mask_BS is not None:
    kf_BHSF = jnp.where(key_mask_BS[:, None, :, None], kf_BHSF, 0.0)
  kv_BHFE = jnp.einsum("bhsf,bhse->bhfe", kf_BHSF, v_BHSE)
  return jnp.einsum("bhlf,bhfe->bhle", qf_BHLF, kv_BHFE)


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


def _causal(qf_BHLF, kf_BHLF, k_amp_BHL, v_BHLE, key_mask_BL, chunk_size):
  b, h, length, f = qf_BHLF.shape
  e = v_BHLE.shape[-1]
  c = min(chunk_size, length)
  n = -(-length // c)
  pad = n * c - length
  if key_mask_BL is None and pad:
    key_mask_BL = jnp.ones((b, length), bool)
  if pad:
    def pad_fn(x, axis):
      widths = [(0, 0)] * x.ndim
      widths[axis] = (0, pad)
      return jnp.pad(x, widths)
    qf_BHLF, kf_BHLF, v_BHLE = (pad_fn(x, 2) for x in (qf_BHLF, kf_BHLF,
                                                       v_BHLE))
    key_mask_BL = pad_fn(key_mask_BL, 1)
    if k_amp_BHL is not None:
      k_amp_BHL = pad_fn(k_amp_BHL, 2)
  if key_mask_BL is not None:
    kf_BHLF = jnp.where(key_mask_BL[:, None, :, None], kf_BHLF, 0.0)

  chunked = lambda x: x.reshape((b, h, n, c) + x.shape[3:])
  qf = chunked(qf_BHLF)        # [B, H, N, C, F]
  v = chunked(v_BHLE)          # [B, H, N, C, E]
  causal_CC = jnp.tril(jnp.ones((c, c), bool))

  if k_amp_BHL is None:
    kf = chunked(kf_BHLF)
    scores = jnp.einsum("bhnif,bhnjf->bhnij", qf, kf)
    scores = jnp.where(causal_CC, scores, 0.0)
    t = jnp.einsum("bhnjf,bhnje->nbhfe", kf, v)
    prefix = _prefix_states(t, jnp.ones((n, b, h), jnp.float32))
    inter = jnp.einsum("bhnif,nbhfe->bhnie", qf, prefix)
  else:
    amp = _masked_log_amp(k_amp_BHL, key_mask_BL)
    # Running max over the keys seen so far: depends on no future key.
    run_BHL = _finite_or_zero(
        jax.lax.stop_gradient(jax.lax.cummax(amp, axis=2)))
    kf = chunked(kf_BHLF * jnp.exp(
        jnp.minimum(k_amp_BHL - run_BHL, 0.0))[..., None])
    run = chunked(run_BHL)     # [B, H, N, C]
    end_BHN = run[..., -1]
    prev_end_BHN = jnp.concatenate([end_BHN[..., :1], end_BHN[..., :-1]],
                                   axis=-1)
    # exp(M_j - M_i) for j <= i; the minimum guards the (masked) j > i
    # entries and the zero-substituted prefix of fully padded positions.
    pair_BHNIJ = jnp.exp(jnp.minimum(run[..., None, :] - run[..., :, None],
                                     0.0))
    scores = jnp.einsum("bhnif,bhnjf->bhnij", qf, kf)
    scores = jnp.where(causal_CC, scores * pair_BHNIJ, 0.0)
    to_end = jnp.exp(jnp.minimum(run - end_BHN[..., None], 0.0))
    t = jnp.einsum("bhnjf,bhnje->nbhfe", kf * to_end[..., None], v)
    decay_NBH = jnp.exp(jnp.minimum(prev_end_BHN - end_BHN, 0.0)).transpose(
        2, 0, 1)
    prefix = _prefix_states(t, decay_NBH)
    from_prev = jnp.exp(jnp.minimum(prev_end_BHN[..., None] - run, 0.0))
    inter = jnp.einsum("bhnif,nbhfe->bhnie", qf * from_prev[..., None],
                       prefix)
  intra = jnp.einsum("bhnij,bhnje->bhnie", scores, v)
  out = (intra + inter).reshape(b, h, n * c, e)
  return out[:, :, :length]


def resolve_implementation(implementation: str, kernel, causal: bool) -> str:
  """Maps "auto" to the implementation that runs: "kernel" for causal
  attention on the CPU backend when the kernel is built and serves `kernel`,
  else "slim". Other names pass through."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}.")
  if implementation == "auto":
    use_kernel = (causal and causal_cpu.supports(kernel) and
                  jax.default_backend() == "cpu" and causal_cpu.built())
    return "kernel" if use_kernel else "slim"
  return implementation


@functools.partial(jax.named_call, name="favor_attention")
def favor_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                    projection: jax.Array | None, *,
                    kernel: str | feature_maps.FeatureFn = "softmax",
                    causal: bool = False,
                    key_mask: jax.Array | None = None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    implementation: str = "auto") -> jax.Array:
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
    implementation: "auto" (default): "kernel" for causal attention on the
      CPU backend when the kernel is built and supports `kernel`, else
      "slim". "kernel": the compiled XLA:CPU causal kernel (causal_cpu.py;
      bidirectional mode runs as "slim"). "slim": custom VJPs. In causal mode the state
      entering each chunk is stored and features are recomputed on the way
      back (the SLiM paper's trade-off; ~2x faster than autodiff on CPU); in
      bidirectional mode, for the "softmax" and
      "softmax_hyperbolic" kernels, `bidirectional.fused_favor` stores
      only the features and runs a hand-written backward pass.
      "autodiff": plain autodiff of the same function (every kernel), which
      stores every feature tensor. Both give the same values and gradients.

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
  implementation = resolve_implementation(implementation, kernel, causal)
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
  finish = lambda out_BLHD: out_BLHD.reshape(
      batch_shape + out_BLHD.shape[1:]).astype(out_dtype)
  if causal and implementation == "slim":
    return finish(slim.slim_causal(q_BLHD, k_BSHD, v_BSHD, km_BS, proj,
                                   kernel=kernel, chunk_size=int(chunk_size)))
  data_normalizer = query.shape[-1] ** -0.25
  heads_major = lambda x: jnp.swapaxes(x.astype(jnp.float32), 1, 2)
  x_q_BHLD = heads_major(q_BLHD) * data_normalizer
  x_k_BHSD = heads_major(k_BSHD) * data_normalizer
  if causal and implementation == "kernel":
    out_BHLD = causal_cpu.kernel_causal(x_q_BHLD, x_k_BHSD,
                                        heads_major(v_BSHD), km_BS, proj,
                                        kernel=kernel,
                                        chunk_size=int(chunk_size))
    return finish(jnp.swapaxes(out_BHLD, 1, 2))
  if (not causal and implementation in ("slim", "kernel") and
      kernel in FUSED_BIDIRECTIONAL):
    proj = jnp.concatenate([proj, -proj]) if kernel == (
        "softmax_hyperbolic") else proj
    out_BHLD = bidirectional.fused_favor(x_q_BHLD, x_k_BHSD,
                                         heads_major(v_BSHD), km_BS, proj)
    return finish(jnp.swapaxes(out_BHLD, 1, 2))
  qf_BHLF, _ = feature_fn(x_q_BHLD)
  kf_BHSF, k_amp_BHS = feature_fn(x_k_BHSD)
  v_BHSE = _append_ones(heads_major(v_BSHD))
  if causal:
    out_BHLE = _causal(qf_BHLF, kf_BHSF, k_amp_BHS, v_BHSE, km_BS,
                       int(chunk_size))
  else:
    out_BHLE = _bidirectional(qf_BHLF, kf_BHSF, k_amp_BHS, v_BHSE, km_BS)
  out_BHLD = normalize(out_BHLE[..., :-1], out_BHLE[..., -1:],
                       signed_features=kernel == "softmax_trig")
  return finish(jnp.swapaxes(out_BHLD, 1, 2))
