"""FAVOR+ as Pallas kernels (`implementation="pallas"`, see api.py).

One program per (batch, head) computes the features of C-token tiles on chip
(pallas_tiles.py) and writes only outputs, states and cotangents: no
`[B, H, L, F]` tensor reaches HBM. Causal stores each chunk's entry state and
recomputes the features backward. Backends: Mosaic TPU (a whole sequence per
VMEM block bounds L: `supports`; a grid over chunks would lift that); Triton
on GPU (power-of-two C, F, D, Dv >= 16; deprecated as of JAX 0.11, but
Mosaic GPU's `pallas_call` has no `dot_general` in JAX 0.10); interpret mode
on the CPU, for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from performer_jax.attention import chunked
from performer_jax.attention import feature_maps
from performer_jax.attention import fused
from performer_jax.attention import pallas_tiles as tiles
from performer_jax.attention import vma

KERNELS = ("softmax", "softmax_hyperbolic", "relu")
# Bytes of one (batch, head)'s whole-sequence blocks that a TPU core's VMEM
# holds comfortably (double-buffered inputs and outputs).
_TPU_VMEM_BUDGET = 24 * 2**20


def platform() -> str:
  """"interpret" (CPU), "gpu" or "tpu": how `pallas_call` runs here."""
  backend = jax.default_backend()
  return {"cpu": "interpret"}.get(backend, backend)


def _pow2(n: int) -> bool:
  return n >= 16 and n & (n - 1) == 0


def supports(kernel, length: int, head_dim: int, value_dim: int,
             num_features: int, chunk_size: int,
             on: str | None = None) -> bool:
  """Whether the kernel serves this call on platform `on` (default: here)."""
  on = on or platform()
  if not isinstance(kernel, str) or kernel not in KERNELS:
    return False
  c = chunked.num_chunks(length, chunk_size)[0]
  if on == "gpu":
    try:
      from jax.experimental.pallas import triton  # noqa: F401
    except ImportError:
      return False
    return all(_pow2(n) for n in (c, head_dim, value_dim, num_features))
  if on == "tpu":
    padded = chunked.num_chunks(length, chunk_size)[1] * c
    return padded * (3 * head_dim + 3 * value_dim) * 4 * 2 < _TPU_VMEM_BUDGET
  return on == "interpret"


def _call(body, *, grid, in_specs, out_specs, out_shape, on):
  kw = {}
  if on == "interpret":
    kw["interpret"] = True
  elif on == "gpu":
    from jax.experimental.pallas import triton as pltriton
    kw["compiler_params"] = pltriton.CompilerParams(num_warps=4,
                                                    num_stages=2)
  elif on == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    kw["compiler_params"] = pltpu.CompilerParams(
        dimension_semantics=("parallel",) * len(grid))
  return pl.pallas_call(body, grid=grid, in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, **kw)


def _whole(shape):
  """BlockSpec of one (batch, head)'s whole array `[G, *shape]`."""
  zeros = (0,) * len(shape)
  return pl.BlockSpec((None,) + tuple(shape), lambda g, *_: (g,) + zeros)


def _tile(c, width):
  """BlockSpec of tile n of `[G, L, width]` on a (g, n) grid."""
  return pl.BlockSpec((None, c, width), lambda g, n: (g, n, 0))


def _f32(shape, like):
  """A float32 output typed as `like` inside `shard_map` (varying along the
  same mesh axes: every input is cast to one type first, vma.align)."""
  mat = getattr(jax.typeof(like), "mat", None)
  if mat is None:
    return jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.ShapeDtypeStruct(shape, jnp.float32, manual_axis_type=mat)


def _rows(ref, n, c):
  return ref[pl.ds(pl.multiple_of(n * c, c), c), :]


# --------------------------------------------------------------- causal


def _causal_fwd_kernel(cfg, c, n_chunks, store, xq, xk, v, keep, w, s0, z0,
                       m0, out, *state_refs):
  w_FD = w[...]

  def step(n, carry):
    s_FE, z_1F, m_11 = carry
    t = tiles.chunk(cfg, _rows(xq, n, c), _rows(xk, n, c), _rows(keep, n, c),
                    w_FD, m_11)
    v_CE = _rows(v, n, c)
    out[pl.ds(pl.multiple_of(n * c, c), c), :] = tiles.attend(
        cfg, t, v_CE, s_FE, z_1F).out
    if store:
      s_in, z_in, m_in = state_refs
      s_in[n] = s_FE
      z_in[pl.ds(n, 1), :] = z_1F
      m_in[pl.ds(n, 1), :] = m_11
    return tiles.carry(cfg, t, v_CE, s_FE, z_1F) + (t.m_out,)

  jax.lax.fori_loop(0, n_chunks, step, (s0[...], z0[...], m0[...]))


def _causal_bwd_kernel(cfg, c, n_chunks, xq, xk, v, keep, w, s_in, z_in,
                       m_in, g, dxq, dxk, dv, ds0, dz0):
  w_FD = w[...]

  def step(i, carry):
    n = n_chunks - 1 - i
    ds_FE, dz_1F = carry
    rows = pl.ds(pl.multiple_of(n * c, c), c)
    dq, dk, dv_, ds_FE, dz_1F = tiles.chunk_backward(
        cfg, xq[rows, :], xk[rows, :], v[rows, :], keep[rows, :], w_FD,
        m_in[pl.ds(n, 1), :], s_in[n], z_in[pl.ds(n, 1), :], g[rows, :],
        ds_FE, dz_1F)
    dxq[rows, :], dxk[rows, :], dv[rows, :] = dq, dk, dv_
    return ds_FE, dz_1F

  ds, dz = jax.lax.fori_loop(0, n_chunks, step,
                             (jnp.zeros(ds0.shape, jnp.float32),
                              jnp.zeros(dz0.shape, jnp.float32)))
  ds0[...], dz0[...] = ds, dz


def _causal_specs(lp, d, e, f, heads, extra):
  keep_spec = pl.BlockSpec((None, lp, 1),
                           lambda g: (jax.lax.div(g, heads), 0, 0))
  return ([_whole((lp, d)), _whole((lp, d)), _whole((lp, e)), keep_spec,
           pl.BlockSpec((f, d), lambda g: (0, 0))] + extra)


def _causal_forward(static, xq, xk, v, keep, w, s0, z0, m0, store):
  cfg, c, heads, on = static
  g, lp, d = xq.shape
  e, f, n = v.shape[-1], w.shape[0], lp // c
  seed_specs = [_whole((f, e)), _whole((1, f)), _whole((1, 1))]
  out_shape = [_f32((g, lp, e), xq)]
  out_specs = [_whole((lp, e))]
  if store:
    out_shape += [_f32((g, n, f, e), xq), _f32((g, n, f), xq),
                  _f32((g, n, 1), xq)]
    out_specs += [_whole((n, f, e)), _whole((n, f)), _whole((n, 1))]
  return _call(
      functools.partial(_causal_fwd_kernel, cfg, c, n, store),
      grid=(g,), in_specs=_causal_specs(lp, d, e, f, heads, seed_specs),
      out_specs=out_specs, out_shape=out_shape, on=on)(
          xq, xk, v, keep, w, s0, z0, m0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _causal_core(static, xq, xk, v, keep, w, s0, z0, m0):
  return _causal_forward(static, xq, xk, v, keep, w, s0, z0, m0, False)[0]


def _causal_core_fwd(static, xq, xk, v, keep, w, s0, z0, m0):
  out, s_in, z_in, m_in = _causal_forward(static, xq, xk, v, keep, w, s0, z0,
                                          m0, True)
  return out, (xq, xk, v, keep, w, s_in, z_in, m_in, m0)


def _causal_core_bwd(static, res, g_GLE):
  cfg, c, heads, on = static
  xq, xk, v, keep, w, s_in, z_in, m_in, m0 = res
  grp, lp, d = xq.shape
  e, f, n = v.shape[-1], w.shape[0], lp // c
  state_specs = [_whole((n, f, e)), _whole((n, f)), _whole((n, 1)),
                 _whole((lp, e))]
  dxq, dxk, dv, ds0, dz0 = _call(
      functools.partial(_causal_bwd_kernel, cfg, c, n),
      grid=(grp,), in_specs=_causal_specs(lp, d, e, f, heads, state_specs),
      out_specs=[_whole((lp, d)), _whole((lp, d)), _whole((lp, e)),
                 _whole((f, e)), _whole((1, f))],
      out_shape=[_f32((grp, lp, d), xq), _f32((grp, lp, d), xq),
                 _f32((grp, lp, e), xq), _f32((grp, f, e), xq),
                 _f32((grp, 1, f), xq)], on=on)(
                     xq, xk, v, keep, w, s_in, z_in, m_in, g_GLE)
  like = lambda x: vma.like(x, xq)
  return (like(dxq), like(dxk), like(dv), jnp.zeros_like(keep),
          jnp.zeros_like(w), like(ds0), like(dz0), jnp.zeros_like(m0))


_causal_core.defvjp(_causal_core_fwd, _causal_core_bwd)


# -------------------------------------------------------- bidirectional


def _summary_kernel(cfg, c, n_chunks, xk, v, keep, w, s, z, m):
  w_FD = w[...]

  def step(n, carry):
    return tiles.summarize(cfg, _rows(xk, n, c), _rows(v, n, c),
                           _rows(keep, n, c), w_FD, *carry)

  s[...], z[...], m[...] = jax.lax.fori_loop(
      0, n_chunks, step, (jnp.zeros(s.shape, jnp.float32),
                          jnp.zeros(z.shape, jnp.float32),
                          jnp.full(m.shape, -jnp.inf, jnp.float32)))


def _query_out(cfg, xq_CD, w_FD, s_FE, z_1F):
  qf = tiles.features(cfg, xq_CD, w_FD)
  den_C1 = jnp.maximum(jnp.sum(qf.feats * z_1F, axis=1, keepdims=True),
                       feature_maps.POSITIVE_FLOOR)
  return qf, den_C1, tiles.mm(cfg, qf.feats, s_FE) / den_C1


def _attend_kernel(cfg, xq, w, s, z, out):
  out[...] = _query_out(cfg, xq[...], w[...], s[...], z[...])[2]


def _query_bwd_kernel(cfg, c, n_chunks, xq, w, s, z, g, dxq, ds, dz):
  w_FD, s_FE, z_1F = w[...], s[...], z[...]

  def step(n, carry):
    ds_FE, dz_1F = carry
    rows = pl.ds(pl.multiple_of(n * c, c), c)
    xq_CD = xq[rows, :]
    qf, den_C1, out_CE = _query_out(cfg, xq_CD, w_FD, s_FE, z_1F)
    g_num_CE = g[rows, :] / den_C1
    g_den_C1 = -jnp.sum(g_num_CE * out_CE, axis=1, keepdims=True)
    g_qf_CF = tiles.mm_nt(cfg, g_num_CE, s_FE) + g_den_C1 * z_1F
    dxq[rows, :] = tiles.feature_grad(cfg, xq_CD, w_FD, qf, g_qf_CF)
    return (ds_FE + tiles.mm_tn(cfg, qf.feats, g_num_CE),
            dz_1F + jnp.sum(qf.feats * g_den_C1, axis=0, keepdims=True))

  ds[...], dz[...] = jax.lax.fori_loop(
      0, n_chunks, step, (jnp.zeros(ds.shape, jnp.float32),
                          jnp.zeros(dz.shape, jnp.float32)))


def _key_bwd_kernel(cfg, xk, v, keep, w, m, ds, dz, dxk, dv):
  xk_CD, keep_C1, w_FD, ds_FE = xk[...], keep[...], w[...], ds[...]
  kf, kt_CF = tiles.key_weights(cfg, xk_CD, keep_C1, w_FD, m[...])
  g_kt_CF = tiles.mm_nt(cfg, v[...], ds_FE) + dz[...]
  dv[...] = tiles.mm(cfg, kt_CF, ds_FE)
  dxk[...] = tiles.key_grad(cfg, xk_CD, keep_C1, w_FD, kf, kt_CF, g_kt_CF)


def _bidir_forward(static, xq, xk, v, keep, w):
  cfg, c, heads, on = static
  g, lq, d = xq.shape
  ls, e, f = xk.shape[1], v.shape[-1], w.shape[0]
  s, z, m = _call(
      functools.partial(_summary_kernel, cfg, c, ls // c), grid=(g,),
      in_specs=_causal_specs(ls, d, e, f, heads, [])[1:],
      out_specs=[_whole((f, e)), _whole((1, f)), _whole((1, 1))],
      out_shape=[_f32((g, f, e), xk), _f32((g, 1, f), xk),
                 _f32((g, 1, 1), xk)], on=on)(
          xk, v, keep, w)
  out = _call(
      functools.partial(_attend_kernel, cfg), grid=(g, lq // c),
      in_specs=[_tile(c, d), pl.BlockSpec((f, d), lambda i, n: (0, 0)),
                _whole((f, e)), _whole((1, f))],
      out_specs=_tile(c, e), out_shape=_f32((g, lq, e), xq), on=on)(
          xq, w, s, z)
  return out, s, z, m


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bidir_core(static, xq, xk, v, keep, w):
  return _bidir_forward(static, xq, xk, v, keep, w)[0]


def _bidir_core_fwd(static, xq, xk, v, keep, w):
  out, s, z, m = _bidir_forward(static, xq, xk, v, keep, w)
  return out, (xq, xk, v, keep, w, s, z, m)


def _bidir_core_bwd(static, res, g_GLE):
  cfg, c, heads, on = static
  xq, xk, v, keep, w, s, z, m = res
  grp, lq, d = xq.shape
  ls, e, f = xk.shape[1], v.shape[-1], w.shape[0]
  w_spec = pl.BlockSpec((f, d), lambda *_: (0, 0))
  dxq, ds, dz = _call(
      functools.partial(_query_bwd_kernel, cfg, c, lq // c), grid=(grp,),
      in_specs=[_whole((lq, d)), w_spec, _whole((f, e)), _whole((1, f)),
                _whole((lq, e))],
      out_specs=[_whole((lq, d)), _whole((f, e)), _whole((1, f))],
      out_shape=[_f32((grp, lq, d), xq), _f32((grp, f, e), xq),
                 _f32((grp, 1, f), xq)],
      on=on)(xq, w, s, z, g_GLE)
  dxk, dv = _call(
      functools.partial(_key_bwd_kernel, cfg), grid=(grp, ls // c),
      in_specs=[_tile(c, d), _tile(c, e),
                pl.BlockSpec((None, c, 1),
                             lambda i, n: (jax.lax.div(i, heads), n, 0)),
                w_spec, _whole((1, 1)), _whole((f, e)), _whole((1, f))],
      out_specs=[_tile(c, d), _tile(c, e)],
      out_shape=[_f32((grp, ls, d), xq), _f32((grp, ls, e), xq)], on=on)(
          xk, v, keep, w, m, ds, dz)
  like = lambda x: vma.like(x, xq)
  return (like(dxq), like(dxk), like(dv), jnp.zeros_like(keep),
          jnp.zeros_like(w))


_bidir_core.defvjp(_bidir_core_fwd, _bidir_core_bwd)


# ------------------------------------------------------------ entry points


def _prepare(kernel, projection, head_dim, dtype):
  """`(TileConfig, [F, D] float32 projection)` of a supported kernel."""
  if kernel == "relu":
    w = jnp.eye(head_dim, dtype=jnp.float32) if projection is None else (
        projection)
    return tiles.TileConfig("relu", dtype), w
  return (tiles.TileConfig("softmax", dtype),
          fused.fused_projection(kernel, projection))


def _grouped(x_BHLX, c):
  """`[B, H, L, X]` -> `[B*H, N*C, X]`, zero-padded to whole tiles."""
  b, h, length = x_BHLX.shape[:3]
  pad = chunked.num_chunks(length, c)[2]
  return chunked.pad_axis(x_BHLX, 2, pad).reshape((b * h, length + pad) +
                                                  x_BHLX.shape[3:])


def _keep(key_mask_BL, b, length, c):
  keep = (jnp.ones((b, length), jnp.float32) if key_mask_BL is None
          else key_mask_BL.astype(jnp.float32))
  return chunked.pad_axis(keep, 1, chunked.num_chunks(length, c)[2])[..., None]


@functools.partial(jax.named_call, name="favor_causal_pallas")
def causal(x_q_BHLD: jax.Array, x_k_BHLD: jax.Array, v_BHLE: jax.Array,
           key_mask_BL: jax.Array | None, projection: jax.Array | None, *,
           kernel: str, chunk_size: int, seed: tuple | None = None,
           dtype=jnp.float32, on: str | None = None) -> jax.Array:
  """Normalized causal FAVOR+ on prepared inputs (layout.favor_inputs), as
  parallel.causal (same arguments and `seed`): float32 `[B, H, L, Dv]`.
  `dtype`: the matmul operand dtype; `on`: the platform (default: here)."""
  b, h, length, d = x_q_BHLD.shape
  dv = v_BHLE.shape[-1]
  c = chunked.num_chunks(length, chunk_size)[0]
  cfg, w = _prepare(kernel, projection, d, dtype)
  f = w.shape[0]
  if seed is None:
    s0 = jnp.zeros((b, h, f, dv + 1), jnp.float32)
    m0 = jnp.full((b, h), -jnp.inf, jnp.float32)
  else:
    m0, s0 = seed
    if m0 is None:
      m0 = jnp.zeros((b, h), jnp.float32)
    # An empty seed (m0 = -inf) is ignored (summary.py).
    s0 = jnp.where(jnp.isfinite(m0)[..., None, None], s0, 0.0)
  xq, xk, v, keep, w, s_FE, z_1F, m_11 = vma.align(
      _grouped(x_q_BHLD, c), _grouped(x_k_BHLD, c), _grouped(v_BHLE, c),
      _keep(key_mask_BL, b, length, c), jax.lax.stop_gradient(w),
      s0[..., :-1].reshape(b * h, f, dv), s0[..., -1].reshape(b * h, 1, f),
      m0.reshape(b * h, 1, 1))
  out = _causal_core((cfg, c, h, on or platform()), xq, xk, v, keep, w,
                     s_FE, z_1F, jax.lax.stop_gradient(m_11))
  return out.reshape(b, h, -1, dv)[:, :, :length]


@functools.partial(jax.named_call, name="favor_bidirectional_pallas")
def bidirectional(x_q_BHLD: jax.Array, x_k_BHSD: jax.Array,
                  v_BHSE: jax.Array, key_mask_BS: jax.Array | None,
                  projection: jax.Array | None, *, kernel: str,
                  chunk_size: int, dtype=jnp.float32,
                  on: str | None = None) -> jax.Array:
  """Normalized bidirectional FAVOR+ on prepared inputs, as
  autodiff.bidirectional: float32 `[B, H, L, Dv]`. Tiles of
  `min(chunk_size, L)` queries and `min(chunk_size, S)` keys."""
  b, h, length, d = x_q_BHLD.shape
  s_len, dv = x_k_BHSD.shape[2], v_BHSE.shape[-1]
  c = min(chunked.num_chunks(length, chunk_size)[0],
          chunked.num_chunks(s_len, chunk_size)[0])
  cfg, w = _prepare(kernel, projection, d, dtype)
  xq, xk, v, keep, w = vma.align(
      _grouped(x_q_BHLD, c), _grouped(x_k_BHSD, c), _grouped(v_BHSE, c),
      _keep(key_mask_BS, b, s_len, c), jax.lax.stop_gradient(w))
  out = _bidir_core((cfg, c, h, on or platform()), xq, xk, v, keep, w)
  return out.reshape(b, h, -1, dv)[:, :, :length]
