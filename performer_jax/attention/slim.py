"""SLiM: causal FAVOR+ whose backward pass recomputes inside each chunk.

Autodiff of the chunked causal path in favor.py stores, for every chunk, the
features `[C, H, F]` of queries and keys, the `[C, C]` intra-chunk scores and
the carried `[F, Dv+1]` state: activation memory grows like L (F + C).
`slim_favor_attention` computes the same function under a `jax.custom_vjp`:

- forward: a `lax.scan` over chunks that keeps only the state entering each
  chunk (`[N, B, H, F, Dv+1]`, N = L / C) besides its inputs q, k, v;
- backward: a reverse `lax.scan`; chunk n rebuilds its features and scores
  from q, k, v and the stored state S_{n-1}, and one `jax.vjp` of that chunk
  maps the output cotangent and dS_n (the cotangent of the state leaving the
  chunk) to dq, dk, dv of the chunk and dS_{n-1}. Gradients are exact.

Memory beyond q, k, v is O(L F Dv / C + C^2 + C F) per layer: it falls with
the chunk size, while the time stays O(L) (one extra forward per chunk).

States are stored rather than rebuilt by subtraction
(`S_{n-1} = S_n - sum_c phi(k) v^T`): with the softmax kernel the state is
kept relative to a running max of key log-amplitudes, and undoing a rescaling
by `exp(M_{n-1} - M_n) <= 1` multiplies rounding error (or revives underflowed
terms) by up to `exp(M_n - M_{n-1})`.

Stabilizer (causal-safe, identical in exact arithmetic to favor.py): key
log-amplitudes are measured against `M_i`, the running max over the keys up
to i, which chunk by chunk is `max(M_end(previous chunk), cummax in chunk)`.
No future key can change a past output. Kernels without log-amplitudes
(relu, user functions) need no stabilizer. Everything runs in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import feature_maps

DEFAULT_CHUNK_SIZE = 64


def _finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _chunk(kernel, signed, s_BHFE, m_BH, q_BHCD, k_BHCD, v_BHCE, mask_BC,
           proj):
  """One chunk: `(state in, running max in, inputs) -> (state out, max out,
  normalized output [B, H, C, E-1])`. The state is relative to `exp(m)`.

  Heads-major layout: every einsum has (b, h) as leading batch dimensions, so
  XLA needs no transposes of the F-wide feature tensors.
  """
  feature_fn = feature_maps.resolve(kernel, proj)
  qf, _ = feature_fn(q_BHCD)
  kf, amp_BHC = feature_fn(k_BHCD)
  keep_B1C = mask_BC[:, None, :] > 0
  kf = jnp.where(keep_B1C[..., None], kf, 0.0)
  c = q_BHCD.shape[2]
  causal_IJ = jnp.tril(jnp.ones((c, c), bool))
  if amp_BHC is None:
    scores = jnp.einsum("bhif,bhjf->bhij", qf, kf)
    scores = jnp.where(causal_IJ, scores, 0.0)
    inter = jnp.einsum("bhif,bhfe->bhie", qf, s_BHFE)
    s_out = s_BHFE + jnp.einsum("bhjf,bhje->bhfe", kf, v_BHCE)
    m_out = m_BH
  else:
    masked = jnp.where(keep_B1C, amp_BHC, -jnp.inf)
    run_raw = jnp.maximum(m_BH[..., None], jax.lax.cummax(masked, axis=2))
    run_BHC = jax.lax.stop_gradient(_finite_or_zero(run_raw))
    m_prev = _finite_or_zero(m_BH)[..., None]         # [B, H, 1]
    m_out = run_raw[..., -1]
    m_end = run_BHC[..., -1:]                           # [B, H, 1]
    kf = kf * jnp.exp(jnp.minimum(amp_BHC - run_BHC, 0.0))[..., None]
    # exp(M_j - M_i) <= 1 for j <= i; the minimum guards the masked j > i.
    pair_BHIJ = jnp.exp(jnp.minimum(
        run_BHC[..., None, :] - run_BHC[..., :, None], 0.0))
    scores = jnp.einsum("bhif,bhjf->bhij", qf, kf)
    scores = jnp.where(causal_IJ, scores * pair_BHIJ, 0.0)
    from_prev = jnp.exp(jnp.minimum(m_prev - run_BHC, 0.0))
    inter = jnp.einsum("bhif,bhfe->bhie", qf * from_prev[..., None], s_BHFE)
    to_end = jnp.exp(jnp.minimum(run_BHC - m_end, 0.0))
    decay_BH = jnp.exp(jnp.minimum(m_prev - m_end, 0.0))[..., 0]
    s_out = s_BHFE * decay_BH[..., None, None] + jnp.einsum(
        "bhjf,bhje->bhfe", kf * to_end[..., None], v_BHCE)
  num = jnp.einsum("bhij,bhje->bhie", scores, v_BHCE) + inter
  out = feature_maps.normalize(num[..., :-1], num[..., -1:], signed_features=signed)
  return s_out, m_out, out


def _initial_state(q_NBHCD, v_NBHCE, proj, kernel):
  b, h = q_NBHCD.shape[1], q_NBHCD.shape[2]
  feats = jax.eval_shape(
      lambda x: feature_maps.resolve(kernel, proj)(x)[0],
      jax.ShapeDtypeStruct((1, q_NBHCD.shape[-1]), jnp.float32))
  s = jnp.zeros((b, h, feats.shape[-1], v_NBHCE.shape[-1]), jnp.float32)
  m = jnp.full((b, h), -jnp.inf, jnp.float32)
  return s, m


def _forward(kernel, signed, q, k, v, mask, proj):
  """Scan over chunks; returns outputs `[N, B, H, C, E-1]` and the states
  entering every chunk."""
  def step(carry, xs):
    s, m = carry
    q_c, k_c, v_c, mask_c = xs
    s_out, m_out, out = _chunk(kernel, signed, s, m, q_c, k_c, v_c, mask_c,
                               proj)
    return (s_out, m_out), (out, s, m)
  init = _initial_state(q, v, proj, kernel)
  _, (out, s_in, m_in) = jax.lax.scan(step, init, (q, k, v, mask))
  return out, (s_in, m_in)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _slim_core(kernel, signed, q_NBHCD, k_NBHCD, v_NBHCE, mask_NBC, proj):
  return _forward(kernel, signed, q_NBHCD, k_NBHCD, v_NBHCE, mask_NBC,
                  proj)[0]


def _slim_fwd(kernel, signed, q, k, v, mask, proj):
  out, (s_in, m_in) = _forward(kernel, signed, q, k, v, mask, proj)
  return out, (q, k, v, mask, proj, s_in, m_in)


def _slim_bwd(kernel, signed, residuals, g_NBHCD):
  q, k, v, mask, proj, s_in, m_in = residuals

  def step(ds_out, xs):
    q_c, k_c, v_c, mask_c, s_c, m_c, g_c = xs
    def chunk_fn(s, q_, k_, v_):
      s_out, _, out = _chunk(kernel, signed, s, m_c, q_, k_, v_, mask_c, proj)
      return s_out, out
    _, vjp = jax.vjp(chunk_fn, s_c, q_c, k_c, v_c)
    ds_in, dq, dk, dv = vjp((ds_out, g_c))
    return ds_in, (dq, dk, dv)

  ds_init = jnp.zeros_like(s_in[0])
  _, (dq, dk, dv) = jax.lax.scan(
      step, ds_init, (q, k, v, mask, s_in, m_in, g_NBHCD), reverse=True)
  dproj = None if proj is None else jnp.zeros_like(proj)
  return dq, dk, dv, jnp.zeros_like(mask), dproj


_slim_core.defvjp(_slim_fwd, _slim_bwd)


def slim_favor_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                         projection: jax.Array | None, *,
                         kernel: str | feature_maps.FeatureFn = "softmax",
                         causal: bool = True,
                         key_mask: jax.Array | None = None,
                         chunk_size: int = DEFAULT_CHUNK_SIZE
                         ) -> jax.Array:
  """`favor_attention(..., implementation="slim")`, causal by default.

  Same arguments, shapes, dtypes and results as `favor.favor_attention`;
  only the memory/time trade-off of the backward pass differs. With
  `causal=False` it is the bidirectional path (which keeps no per-chunk
  state, so there is nothing to save). Backward memory beyond q, k, v is
  about `(L / C) * H * M * (Dv + 1) + H * C^2` floats per batch element.
  """
  from performer_jax.attention import favor  # favor imports this module.
  return favor.favor_attention(query, key, value, projection, kernel=kernel,
                               causal=causal, key_mask=key_mask,
                               chunk_size=chunk_size, implementation="slim")


@functools.partial(jax.named_call, name="slim_causal")
def slim_causal(q_BLHD: jax.Array, k_BLHD: jax.Array, v_BLHD: jax.Array,
                km_BL: jax.Array | None, proj: jax.Array | None, *,
                kernel, chunk_size: int) -> jax.Array:
  """Causal FAVOR+ with the SLiM backward on validated, flattened inputs.

  Args:
    q_BLHD, k_BLHD: `[B, L, H, D]` (padded keys already zeroed).
    v_BLHD: `[B, L, H, Dv]`.
    km_BL: bool `[B, L]` or None.
    proj: float32 `[M, D]` or None.
    kernel: as favor_attention.
    chunk_size: C.

  Returns:
    float32 `[B, L, H, Dv]`.
  """
  b, length, h, d = q_BLHD.shape
  c = min(int(chunk_size), length)
  n = -(-length // c)
  pad = n * c - length
  scale = d ** -0.25
  # Heads-major [B, H, L, D]: the narrow D-wide inputs are transposed once
  # instead of the F-wide features inside every einsum.
  q = q_BLHD.astype(jnp.float32).transpose(0, 2, 1, 3) * scale
  k = k_BLHD.astype(jnp.float32).transpose(0, 2, 1, 3) * scale
  v_f = v_BLHD.astype(jnp.float32).transpose(0, 2, 1, 3)
  # A ones column makes the normalizer a by-product of the numerator.
  v = jnp.concatenate([v_f, jnp.ones(v_f.shape[:-1] + (1,), jnp.float32)],
                      axis=-1)
  mask = (jnp.ones((b, length), jnp.float32) if km_BL is None
          else km_BL.astype(jnp.float32))
  if pad:
    pad_l = lambda x, axis: jnp.pad(
        x, [(0, pad) if i == axis else (0, 0) for i in range(x.ndim)])
    q, k, v = (pad_l(x, 2) for x in (q, k, v))
    mask = pad_l(mask, 1)

  def to_chunks(x):  # [B, H, N*C, X] -> [N, B, H, C, X]
    return jnp.moveaxis(x.reshape((b, h, n, c) + x.shape[3:]), 2, 0)
  mask_NBC = jnp.moveaxis(mask.reshape(b, n, c), 1, 0)
  out_NBHCD = _slim_core(kernel, kernel == "softmax_trig", to_chunks(q),
                         to_chunks(k), to_chunks(v), mask_NBC, proj)
  out_BLHD = jnp.moveaxis(out_NBHCD, 0, 2).reshape(b, h, n * c, -1)
  return out_BLHD[:, :, :length].transpose(0, 2, 1, 3)
