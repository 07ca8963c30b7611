"""The tile math of the Pallas FAVOR+ kernels (pallas_favor.py).

Plain `jnp` functions on one tile of C tokens of one (batch, head); they
touch no refs, so every backend shares them, and tests compare them with
`chunked.chunk_terms` outside a kernel. Only what every backend lowers: 2-D
arrays (columns `[C, 1]`, rows `[1, F]`, scalars `[1, 1]`), no cumulative
ops, no transposes (a column becomes a row through a masked sum with the
identity), `dot_general` with `dtype` operands and float32 accumulation.
Per chunk (a = key log-amplitude, M_i the running max over the unpadded keys
j <= i, m_in the max before the chunk, m_end = M_{C-1}):
  kt_j = phi~(k_j) exp(a_j - M_j) [j kept]    qin_i = phi~(q_i) exp(m_in - M_i)
  A_ij = (phi~(q_i) . kt_j) exp(M_j - M_i) [j <= i]
  num = A v + qin S,  den = A 1 + qin z,  out = num / max(den, floor)
  S' = S exp(m_in - m_end) + (kt exp(M - m_end))^T v   (z' likewise with 1)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from performer_jax.attention import feature_maps

_NEG_INF = float("-inf")


class TileConfig(NamedTuple):
  """Static choices of a kernel: the feature map kind ("softmax" for the
  exponential maps, whose projection is fused.fused_projection's, or
  "relu"), and the matmul operand dtype (the inputs' dtype)."""
  kind: str
  dtype: object

  @property
  def has_amp(self) -> bool:
    return self.kind == "softmax"


def _dot(cfg: TileConfig, a, b, contract):
  """`dot_general` of a, b (cast to the operand dtype) contracting the axis
  pair `contract`, accumulated in float32."""
  precision = (jax.lax.Precision.HIGHEST if jnp.dtype(cfg.dtype) ==
               jnp.float32 else None)
  return jax.lax.dot_general(
      a.astype(cfg.dtype), b.astype(cfg.dtype), ((contract[:1], contract[1:]),
                                                 ((), ())),
      precision=precision, preferred_element_type=jnp.float32)


def mm(cfg, a, b):
  """`a @ b`."""
  return _dot(cfg, a, b, (1, 0))


def mm_nt(cfg, a, b):
  """`a @ b.T`."""
  return _dot(cfg, a, b, (1, 1))


def mm_tn(cfg, a, b):
  """`a.T @ b`."""
  return _dot(cfg, a, b, (0, 0))


def state_dtype(cfg: TileConfig):
  """The dtype a causal pass stores chunks' entry states S in for its
  backward: the matmul operand dtype, since the backward uses S only as
  an operand (`attend`, `chunk_backward`), so a stored copy is exactly
  what those products read (bf16 halves the largest residual; a state
  recomputed from it, pallas_calls.py's odd chunks, starts from the
  rounded copy). z and the carried state stay float32."""
  return cfg.dtype


def _foz(x):
  """-inf (no unpadded key seen yet) -> 0; nothing else is ever infinite."""
  return jnp.where(x == _NEG_INF, 0.0, x)


def _exp_le1(x):
  return jnp.exp(jnp.minimum(x, 0.0))


def col_to_row(col_C1):
  """`[C, 1]` -> `[1, C]` without a transpose."""
  c = col_C1.shape[0]
  eye = (jax.lax.broadcasted_iota(jnp.int32, (c, c), 0) ==
         jax.lax.broadcasted_iota(jnp.int32, (c, c), 1))
  return jnp.sum(jnp.where(eye, col_C1, 0.0), axis=0, keepdims=True)


def tril(c: int):
  """bool `[C, C]`, True where key j <= query i."""
  return (jax.lax.broadcasted_iota(jnp.int32, (c, c), 1) <=
          jax.lax.broadcasted_iota(jnp.int32, (c, c), 0))


class Features(NamedTuple):
  """feats `[C, F]` float32 (bounded part), amp `[C, 1]` log-amplitude (None
  for relu), pre `[C, F]` the projection (relu's gradient needs its sign)."""
  feats: jax.Array
  amp: jax.Array | None
  pre: jax.Array


def features(cfg: TileConfig, x_CD, w_FD) -> Features:
  """phi of a tile, in feature_maps.py's factored form."""
  pre_CF = mm_nt(cfg, x_CD, w_FD)
  if not cfg.has_amp:
    return Features(jnp.maximum(pre_CF, 0.0) + feature_maps.RELU_EPS, None,
                    pre_CF)
  top_C1 = jnp.max(pre_CF, axis=1, keepdims=True)
  x_CD = x_CD.astype(jnp.float32)
  half_sq_C1 = 0.5 * jnp.sum(x_CD * x_CD, axis=1, keepdims=True)
  return Features(jnp.exp(pre_CF - top_C1), top_C1 - half_sq_C1, pre_CF)


def feature_grad(cfg: TileConfig, x_CD, w_FD, f: Features, g_CF):
  """dx from `g = dLoss/dfeats` (as autodiff of feature_maps.py: the max
  shift carries no gradient, the |x|^2/2 term does)."""
  if not cfg.has_amp:
    return mm(cfg, jnp.where(f.pre > 0.0, g_CF, 0.0), w_FD)
  gp_CF = g_CF * f.feats
  return mm(cfg, gp_CF, w_FD) - x_CD.astype(jnp.float32) * jnp.sum(
      gp_CF, axis=1, keepdims=True)


def key_grad(cfg, xk_CD, keep_C1, w_FD, kf: Features, kt_CF, g_kt_CF):
  """dxk from `g = dLoss/dkt`, kt the kept, stabilized key features."""
  if not cfg.has_amp:
    return feature_grad(cfg, xk_CD, w_FD, kf,
                        jnp.where(keep_C1 > 0, g_kt_CF, 0.0))
  # kt = exp(logits - M) with a stop-gradient M: dLoss/dlogits = g kt.
  gp_CF = g_kt_CF * kt_CF
  return mm(cfg, gp_CF, w_FD) - xk_CD.astype(jnp.float32) * jnp.sum(
      gp_CF, axis=1, keepdims=True)


class Chunk(NamedTuple):
  """One causal chunk's recomputable terms (module docstring)."""
  qf: Features
  kf: Features
  kt: jax.Array      # [C, F]
  pair: jax.Array    # [C, C] exp(M_j - M_i) [j <= i]
  q_scale: jax.Array   # [C, 1] exp(m_in - M_i)
  end_scale: jax.Array   # [C, 1] exp(M_j - m_end)
  decay: jax.Array   # [1, 1] exp(m_in - m_end)
  m_out: jax.Array   # [1, 1] running max after the chunk (-inf: none yet)


def chunk(cfg: TileConfig, xq_CD, xk_CD, keep_C1, w_FD, m_in_11) -> Chunk:
  """The stabilized features of one chunk (chunked.chunk_terms' math)."""
  c = xq_CD.shape[0]
  causal_CC = tril(c)
  qf, kf = features(cfg, xq_CD, w_FD), features(cfg, xk_CD, w_FD)
  kept_CF = jnp.where(keep_C1 > 0, kf.feats, 0.0)
  if not cfg.has_amp:
    one_C1 = jnp.ones((c, 1), jnp.float32)
    one_11 = jnp.ones((1, 1), jnp.float32)
    return Chunk(qf, kf, kept_CF, causal_CC.astype(jnp.float32), one_C1,
                 one_C1, one_11, m_in_11)
  amp_1C = col_to_row(jnp.where(keep_C1 > 0, kf.amp, 0.0))
  amp_1C = jnp.where(col_to_row(keep_C1) > 0, amp_1C, _NEG_INF)
  run_raw_C1 = jnp.maximum(m_in_11, jnp.max(
      jnp.where(causal_CC, amp_1C, _NEG_INF), axis=1, keepdims=True))
  run_C1, run_1C = _foz(run_raw_C1), _foz(col_to_row(_foz(run_raw_C1)))
  m_raw_11 = jnp.max(run_raw_C1, axis=0, keepdims=True)
  m_prev_11, m_end_11 = _foz(m_in_11), _foz(m_raw_11)
  return Chunk(
      qf, kf, kept_CF * _exp_le1(kf.amp - run_C1),
      jnp.where(causal_CC, _exp_le1(run_1C - run_C1), 0.0),
      _exp_le1(m_prev_11 - run_C1), _exp_le1(run_C1 - m_end_11),
      _exp_le1(m_prev_11 - m_end_11), m_raw_11)


class Attended(NamedTuple):
  a: jax.Array     # [C, C] intra-chunk weights
  q_in: jax.Array  # [C, F]
  den: jax.Array   # [C, 1] guarded normalizer
  out: jax.Array   # [C, Dv]


def attend(cfg, t: Chunk, v_CE, s_FE, z_1F) -> Attended:
  """The normalized output of a chunk entering with state (S, z)."""
  a_CC = mm_nt(cfg, t.qf.feats, t.kt) * t.pair
  q_in_CF = t.qf.feats * t.q_scale
  num_CE = mm(cfg, a_CC, v_CE) + mm(cfg, q_in_CF, s_FE)
  den_C1 = (jnp.sum(a_CC, axis=1, keepdims=True) +
            jnp.sum(q_in_CF * z_1F, axis=1, keepdims=True))
  den_C1 = jnp.maximum(den_C1, feature_maps.POSITIVE_FLOOR)
  return Attended(a_CC, q_in_CF, den_C1, num_CE / den_C1)


def carry(cfg, t: Chunk, v_CE, s_FE, z_1F):
  """The state `(S', z')` leaving the chunk."""
  k_end_CF = t.kt * t.end_scale
  return (s_FE * t.decay + mm_tn(cfg, k_end_CF, v_CE),
          z_1F * t.decay + jnp.sum(k_end_CF, axis=0, keepdims=True))


def chunk_backward(cfg, xq_CD, xk_CD, v_CE, keep_C1, w_FD, m_in_11, s_FE,
                   z_1F, g_CE, ds_FE, dz_1F):
  """Cotangents `(dxq, dxk, dv, dS_in, dz_in)` of one chunk from the output
  cotangent g and those of the state leaving it (ds, dz)."""
  t = chunk(cfg, xq_CD, xk_CD, keep_C1, w_FD, m_in_11)
  at = attend(cfg, t, v_CE, s_FE, z_1F)
  g_num_CE = g_CE / at.den
  g_den_C1 = -jnp.sum(g_num_CE * at.out, axis=1, keepdims=True)
  g_a_CC = (mm_nt(cfg, g_num_CE, v_CE) + g_den_C1) * t.pair
  k_end_CF = t.kt * t.end_scale
  dv_CE = mm_tn(cfg, at.a, g_num_CE) + mm(cfg, k_end_CF, ds_FE)
  g_q_in_CF = mm_nt(cfg, g_num_CE, s_FE) + g_den_C1 * z_1F
  g_qf_CF = mm(cfg, g_a_CC, t.kt) + g_q_in_CF * t.q_scale
  g_kt_CF = (mm_tn(cfg, g_a_CC, t.qf.feats) +
             (mm_nt(cfg, v_CE, ds_FE) + dz_1F) * t.end_scale)
  ds_in_FE = ds_FE * t.decay + mm_tn(cfg, at.q_in, g_num_CE)
  dz_in_1F = dz_1F * t.decay + jnp.sum(at.q_in * g_den_C1, axis=0,
                                       keepdims=True)
  dxq_CD = feature_grad(cfg, xq_CD, w_FD, t.qf, g_qf_CF)
  dxk_CD = key_grad(cfg, xk_CD, keep_C1, w_FD, t.kf, t.kt, g_kt_CF)
  return dxq_CD, dxk_CD, dv_CE, ds_in_FE, dz_in_1F


def summarize(cfg, xk_CD, v_CE, keep_C1, w_FD, s_FE, z_1F, m_11):
  """Bidirectional: adds a chunk of keys to the summary `(S, z, m)`, kept
  relative to the max key log-amplitude m seen so far (summary.py's
  operator, applied one chunk at a time)."""
  kf = features(cfg, xk_CD, w_FD)
  kept_CF = jnp.where(keep_C1 > 0, kf.feats, 0.0)
  if not cfg.has_amp:
    return (s_FE + mm_tn(cfg, kept_CF, v_CE),
            z_1F + jnp.sum(kept_CF, axis=0, keepdims=True), m_11)
  amp_C1 = jnp.where(keep_C1 > 0, kf.amp, _NEG_INF)
  m_new_11 = jnp.maximum(m_11, jnp.max(amp_C1, axis=0, keepdims=True))
  scale_11 = _exp_le1(_foz(m_11) - _foz(m_new_11))
  kt_CF = kept_CF * _exp_le1(amp_C1 - _foz(m_new_11))
  return (s_FE * scale_11 + mm_tn(cfg, kt_CF, v_CE),
          z_1F * scale_11 + jnp.sum(kt_CF, axis=0, keepdims=True), m_new_11)


def key_weights(cfg, xk_CD, keep_C1, w_FD, m_11):
  """Bidirectional: the features and `kt = feats exp(a - m)` of kept keys."""
  kf = features(cfg, xk_CD, w_FD)
  kept_CF = jnp.where(keep_C1 > 0, kf.feats, 0.0)
  if cfg.has_amp:
    kept_CF = kept_CF * _exp_le1(kf.amp - _foz(m_11))
  return kf, kept_CF


def query_out(cfg, xq_CD, w_FD, s_FE, z_1F):
  """Bidirectional: a query tile's `(features, guarded normalizer [C, 1],
  output [C, Dv])` against the keys' summary `(S, z)`."""
  qf = features(cfg, xq_CD, w_FD)
  den_C1 = jnp.maximum(jnp.sum(qf.feats * z_1F, axis=1, keepdims=True),
                       feature_maps.POSITIVE_FLOOR)
  return qf, den_C1, mm(cfg, qf.feats, s_FE) / den_C1


def query_backward(cfg, xq_CD, w_FD, s_FE, z_1F, g_CE):
  """Bidirectional: a query tile's `(dxq, dS, dz)` (its share of the
  summary's cotangent) from its output cotangent g."""
  qf, den_C1, out_CE = query_out(cfg, xq_CD, w_FD, s_FE, z_1F)
  g_num_CE = g_CE / den_C1
  g_den_C1 = -jnp.sum(g_num_CE * out_CE, axis=1, keepdims=True)
  g_qf_CF = mm_nt(cfg, g_num_CE, s_FE) + g_den_C1 * z_1F
  return (feature_grad(cfg, xq_CD, w_FD, qf, g_qf_CF),
          mm_tn(cfg, qf.feats, g_num_CE),
          jnp.sum(qf.feats * g_den_C1, axis=0, keepdims=True))
