"""Bidirectional FAVOR+ with exponential features: a fused custom VJP.

On a CPU this pass is bound by memory traffic over `[B, H, L, F]`, so it
stores only the features (one fused `exp` each), S, z, the normalizer and
the output, with a hand-written backward: no gradient through the
stabilizers (the max shifts, which cancel), no `den**2`, the normalizer a
separate matvec (64-aligned matmuls). Per slice, `x = d^(-1/4) q` (resp. k),
`W` the `[F, D]` projection, `P = x W^T`, M the max of `P_jf - |x_j|^2/2`
over unpadded j and all f:
  Q'_i = exp(P_i - max_f P_if),  K'_j = exp(P_j - |x_j|^2/2 - M) [j unpadded]
  S = K'^T V, z = K'^T 1, out_i = Q'_i S / max(Q'_i z, floor)
  dx_q = (dQ' * Q') W   (out_i is homogeneous of degree 0 in Q'_i, so the
                        query's |x|^2 and max shifts contribute 0)
  dx_k = (dK' * K') W - x_k rowsum(dK' * K')
`softmax_hyperbolic` is this with the projection `[W; -W]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import feature_maps
from performer_jax.attention import vma

_HIGHEST = jax.lax.Precision.HIGHEST
# Kernels whose features are exp(x W^T - |x|^2/2) for some W: written by hand.
FUSED_KERNELS = ("softmax", "softmax_hyperbolic")


def fused_projection(kernel: str, projection_MD: jax.Array) -> jax.Array:
  """The `[F, D]` projection W of a fused kernel: `W` for "softmax",
  `[W; -W]` for "softmax_hyperbolic"."""
  if kernel == "softmax_hyperbolic":
    return jnp.concatenate([projection_MD, -projection_MD])
  return projection_MD


def query_features(x_GLD, w_FD):
  """`exp(x W^T - max_f)`: the per-query factor cancels in the output.
  Any leading dimensions (`G` here, or `B, H`)."""
  p_GLF = jnp.einsum("...ld,fd->...lf", x_GLD, w_FD, precision=_HIGHEST)
  return jnp.exp(p_GLF - jnp.max(p_GLF, axis=-1, keepdims=True))


def key_features(x_GSD, w_FD, mask_GS, causal=False):
  """`exp(x W^T - |x|^2/2 - M)`, zero for padded keys, and M.

  M is the max key log-amplitude over the unpadded keys (`[G, 1]`), or in
  causal mode the running max over keys <= j (`[G, S]`), which no later key
  can change. It is 0 where no unpadded key has been seen yet. Any leading
  dimensions; mask_GS broadcasts against `x_GSD.shape[:-1]`.
  """
  p_GSF = jnp.einsum("...sd,fd->...sf", x_GSD, w_FD, precision=_HIGHEST)
  half_sq_GS = 0.5 * jnp.sum(x_GSD * x_GSD, axis=-1)
  top_GS = jnp.max(p_GSF, axis=-1) - half_sq_GS
  if mask_GS is not None:
    top_GS = jnp.where(mask_GS, top_GS, -jnp.inf)
  if causal:
    m_GS = jax.lax.cummax(top_GS, axis=top_GS.ndim - 1)
  else:
    m_GS = jnp.max(top_GS, axis=-1, keepdims=True)
  m_GS = jnp.where(jnp.isfinite(m_GS), m_GS, 0.0)  # no unpadded key yet
  k_GSF = jnp.exp(p_GSF - (half_sq_GS + m_GS)[..., None])
  if mask_GS is not None:
    k_GSF = jnp.where(mask_GS[..., None], k_GSF, 0.0)
  return k_GSF, m_GS


def feature_input_grads(x_k, w_FD, gp_q_GLF, gp_k_GSF):
  """dx_q, dx_k from `gp = dLoss/dfeatures * features` (see the module
  docstring: the query's own shifts contribute 0, the key's |x|^2/2 gives
  the second term)."""
  g_xq = jnp.einsum("...lf,fd->...ld", gp_q_GLF, w_FD, precision=_HIGHEST)
  g_xk = (jnp.einsum("...sf,fd->...sd", gp_k_GSF, w_FD, precision=_HIGHEST) -
          x_k * jnp.sum(gp_k_GSF, axis=-1, keepdims=True))
  return g_xq, g_xk


def _forward(x_q, x_k, v_GSE, mask_GS, w_FD):
  qf_GLF = query_features(x_q, w_FD)
  kf_GSF, _ = key_features(x_k, w_FD, mask_GS)
  s_GEF = jnp.einsum("gse,gsf->gef", v_GSE, kf_GSF)
  z_GF = jnp.sum(kf_GSF, axis=1)
  num_GLE = jnp.einsum("glf,gef->gle", qf_GLF, s_GEF)
  den_GL1 = jnp.maximum(jnp.einsum("glf,gf->gl", qf_GLF, z_GF),
                        feature_maps.POSITIVE_FLOOR)[..., None]
  return num_GLE / den_GL1, qf_GLF, kf_GSF, s_GEF, z_GF, den_GL1


def _backward(x_q, x_k, v_GSE, w_FD, qf_GLF, kf_GSF, s_GEF, z_GF, den_GL1,
              out_GLE, g_GLE):
  g_num_GLE = g_GLE / den_GL1
  g_den_GL = -jnp.sum(g_num_GLE * out_GLE, axis=-1)
  g_s_GEF = jnp.einsum("gle,glf->gef", g_num_GLE, qf_GLF)
  g_z_GF = jnp.einsum("gl,glf->gf", g_den_GL, qf_GLF)
  gp_q_GLF = (jnp.einsum("gle,gef->glf", g_num_GLE, s_GEF) +
              g_den_GL[..., None] * z_GF[:, None, :]) * qf_GLF
  gp_k_GSF = (jnp.einsum("gse,gef->gsf", v_GSE, g_s_GEF) +
              g_z_GF[:, None, :]) * kf_GSF
  g_v_GSE = jnp.einsum("gsf,gef->gse", kf_GSF, g_s_GEF)
  g_xq, g_xk = feature_input_grads(x_k, w_FD, gp_q_GLF, gp_k_GSF)
  return g_xq, g_xk, g_v_GSE


@jax.custom_vjp
def _fused(x_q, x_k, v, mask, w_FD):
  return _forward(x_q, x_k, v, mask, w_FD)[0]


def _fused_fwd(x_q, x_k, v, mask, w_FD):
  out, qf, kf, s, z, den = _forward(x_q, x_k, v, mask, w_FD)
  return out, (x_q, x_k, v, w_FD, qf, kf, s, z, den, out)


def _fused_bwd(res, g):
  g_xq, g_xk, g_v = _backward(*res, g)
  return g_xq, g_xk, g_v, None, jnp.zeros_like(res[3])


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.named_call, name="favor_bidirectional_fused")
def bidirectional(x_q_BHLD: jax.Array, x_k_BHSD: jax.Array, v_BHSE: jax.Array,
                  key_mask_BS: jax.Array | None, projection_MD: jax.Array, *,
                  kernel: str) -> jax.Array:
  """Bidirectional positive-feature FAVOR+ with a hand-written VJP.

  Args:
    x_q_BHLD, x_k_BHSD: float32 queries and keys, heads-major and already
      multiplied by the data normalizer `D^(-1/4)` (layout.favor_inputs).
    v_BHSE: float32 values, heads-major.
    key_mask_BS: bool or None; padded keys must already hold finite values
      (`layout.sanitize_padding`).
    projection_MD: float32 `[M, D]`, no gradient.
    kernel: one of FUSED_KERNELS.

  Returns:
    float32 `[B, H, L, E]`, normalized.
  """
  b, h, length, _ = x_q_BHLD.shape
  s_len = x_k_BHSD.shape[2]
  # (batch, head) pairs flattened into one batch axis G: a free reshape.
  flat = lambda x: x.reshape((b * h,) + x.shape[2:])
  mask_GS = None
  if key_mask_BS is not None:
    mask_GS = flat(jnp.broadcast_to(key_mask_BS[:, None], (b, h, s_len)))
  # One varying-axes type for every input (vma.py), so that the custom VJP's
  # cotangents have its inputs' types inside shard_map.
  out_GLE = _fused(*vma.align(flat(x_q_BHLD), flat(x_k_BHSD), flat(v_BHSE),
                              mask_GS, fused_projection(kernel,
                                                        projection_MD)))
  return out_GLE.reshape(b, h, length, -1)
