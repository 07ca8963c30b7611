"""The `pallas_call`s of the FAVOR+ kernels and their custom VJPs.

Kernel bodies read and write refs and call the tile math (pallas_tiles.py);
each `*_core` is a `jax.custom_vjp` over them. `static` is `(TileConfig,
C, H, platform)`; arrays are grouped `[G = B*H, L, X]` (pallas_favor.py
prepares them). Every output is float32, except the stored entry states
(`tiles.state_dtype`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from performer_jax.attention import pallas_launch as launch
from performer_jax.attention import pallas_tiles as tiles
from performer_jax.attention import pallas_tpu
from performer_jax.attention import vma


# --------------------------------------------------------------- causal


def _causal_fwd_kernel(cfg, c, n_chunks, store, xq, xk, v, keep, w, s0, z0,
                       m0, out, *state_refs):
  w_FD = w[...]

  def step(n, carry):
    s_FE, z_1F, m_11 = carry
    rows = functools.partial(launch.rows, n=n, c=c)
    t = tiles.chunk(cfg, rows(xq), rows(xk), rows(keep), w_FD, m_11)
    v_CE = rows(v)
    out[pl.ds(pl.multiple_of(n * c, c), c), :] = tiles.attend(
        cfg, t, v_CE, s_FE, z_1F).out
    if store:  # every other chunk's entry state (`_causal_bwd_kernel`)
      @pl.when(jax.lax.rem(n, 2) == 0)
      def _():
        s_in, z_in, m_in = state_refs
        half = jax.lax.div(n, 2)
        s_in[half] = s_FE.astype(s_in.dtype)
        z_in[pl.ds(half, 1), :] = z_1F
        m_in[pl.ds(half, 1), :] = m_11
    return tiles.carry(cfg, t, v_CE, s_FE, z_1F) + (t.m_out,)

  jax.lax.fori_loop(0, n_chunks, step, (s0[...], z0[...], m0[...]))


def _causal_bwd_kernel(cfg, c, n_chunks, xq, xk, v, keep, w, s_in, z_in,
                       m_in, g, dxq, dxk, dv, ds0, dz0):
  """The chunks in reverse. An even chunk's entry state is stored; an odd
  one's is recomputed from the chunk before it (one `tiles.chunk` and
  `tiles.carry` more every other chunk, for half the stored states)."""
  w_FD = w[...]

  def entry_state(n):
    j = jax.lax.div(n, 2)
    s_FE, z_1F, m_11 = s_in[j], z_in[pl.ds(j, 1), :], m_in[pl.ds(j, 1), :]
    s_FE = s_FE.astype(jnp.float32)

    def odd():
      rows = pl.ds(pl.multiple_of(2 * j * c, c), c)
      t = tiles.chunk(cfg, xq[rows, :], xk[rows, :], keep[rows, :], w_FD,
                      m_11)
      return tiles.carry(cfg, t, v[rows, :], s_FE, z_1F) + (t.m_out,)
    return jax.lax.cond(jax.lax.rem(n, 2) == 1, odd,
                        lambda: (s_FE, z_1F, m_11))

  def step(i, carry):
    n = n_chunks - 1 - i
    rows = pl.ds(pl.multiple_of(n * c, c), c)
    s_FE, z_1F, m_11 = entry_state(n)
    dq, dk, dv_, ds_FE, dz_1F = tiles.chunk_backward(
        cfg, xq[rows, :], xk[rows, :], v[rows, :], keep[rows, :], w_FD,
        m_11, s_FE, z_1F, g[rows, :], *carry)
    dxq[rows, :], dxk[rows, :], dv[rows, :] = dq, dk, dv_
    return ds_FE, dz_1F

  ds, dz = jax.lax.fori_loop(0, n_chunks, step,
                             (jnp.zeros(ds0.shape, jnp.float32),
                              jnp.zeros(dz0.shape, jnp.float32)))
  ds0[...], dz0[...] = ds, dz


def _causal_specs(lp, d, e, f, heads, extra):
  keep_spec = pl.BlockSpec((None, lp, 1),
                           lambda g: (jax.lax.div(g, heads), 0, 0))
  whole = launch.whole
  return ([whole((lp, d)), whole((lp, d)), whole((lp, e)), keep_spec,
           pl.BlockSpec((f, d), lambda g: (0, 0))] + extra)


def _causal_forward(static, xq, xk, v, keep, w, s0, z0, m0, store):
  """Outputs and (with `store`) the chunks' entry states, in a layout only
  the same platform's `_causal_backward` reads."""
  cfg, c, heads, on = static
  if on in pallas_tpu.PLATFORMS:
    return pallas_tpu.causal_forward(static, xq, xk, v, keep, w, s0, z0, m0,
                                     store)
  g, lp, d = xq.shape
  e, f, n = v.shape[-1], w.shape[0], lp // c
  whole, f32 = launch.whole, launch.f32_like
  seed_specs = [whole((f, e)), whole((1, f)), whole((1, 1))]
  out_shape = [f32((g, lp, e), xq)]
  out_specs = [whole((lp, e))]
  if store:  # every other chunk's (`_causal_bwd_kernel`)
    ns = -(-n // 2)
    out_shape += [f32((g, ns, f, e), xq, tiles.state_dtype(cfg)),
                  f32((g, ns, f), xq), f32((g, ns, 1), xq)]
    out_specs += [whole((ns, f, e)), whole((ns, f)), whole((ns, 1))]
  return launch.call(
      functools.partial(_causal_fwd_kernel, cfg, c, n, store),
      grid=(g,), in_specs=_causal_specs(lp, d, e, f, heads, seed_specs),
      out_specs=out_specs, out_shape=out_shape, on=on)(
          xq, xk, v, keep, w, s0, z0, m0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def causal_core(static, xq, xk, v, keep, w, s0, z0, m0):
  return _causal_forward(static, xq, xk, v, keep, w, s0, z0, m0, False)[0]


def _causal_core_fwd(static, xq, xk, v, keep, w, s0, z0, m0):
  out, s_in, z_in, m_in = _causal_forward(static, xq, xk, v, keep, w, s0, z0,
                                          m0, True)
  return out, (xq, xk, v, keep, w, s_in, z_in, m_in, m0)


def _causal_backward(static, xq, xk, v, keep, w, s_in, z_in, m_in, g_GLE):
  """`(dxq, dxk, dv, dS0, dz0)`: the chunks walked in reverse."""
  cfg, c, heads, on = static
  if on in pallas_tpu.PLATFORMS:
    return pallas_tpu.causal_backward(static, xq, xk, v, keep, w, s_in, z_in,
                                      m_in, g_GLE)
  grp, lp, d = xq.shape
  e, f, n = v.shape[-1], w.shape[0], lp // c
  whole, f32 = launch.whole, launch.f32_like
  ns = -(-n // 2)
  state_specs = [whole((ns, f, e)), whole((ns, f)), whole((ns, 1)),
                 whole((lp, e))]
  return launch.call(
      functools.partial(_causal_bwd_kernel, cfg, c, n),
      grid=(grp,), in_specs=_causal_specs(lp, d, e, f, heads, state_specs),
      out_specs=[whole((lp, d)), whole((lp, d)), whole((lp, e)),
                 whole((f, e)), whole((1, f))],
      out_shape=[f32((grp, lp, d), xq), f32((grp, lp, d), xq),
                 f32((grp, lp, e), xq), f32((grp, f, e), xq),
                 f32((grp, 1, f), xq)], on=on)(
                     xq, xk, v, keep, w, s_in, z_in, m_in, g_GLE)


def _causal_core_bwd(static, res, g_GLE):
  xq, xk, v, keep, w, s_in, z_in, m_in, m0 = res
  dxq, dxk, dv, ds0, dz0 = _causal_backward(
      static, xq, xk, v, keep, w, s_in, z_in, m_in, g_GLE)
  like = lambda x: vma.like(x, xq)
  return (like(dxq), like(dxk), like(dv), jnp.zeros_like(keep),
          jnp.zeros_like(w), like(ds0), like(dz0), jnp.zeros_like(m0))


causal_core.defvjp(_causal_core_fwd, _causal_core_bwd)


# -------------------------------------------------------- bidirectional


def _summary_kernel(cfg, c, n_chunks, xk, v, keep, w, s, z, m):
  w_FD = w[...]

  def step(n, carry):
    return tiles.summarize(cfg, launch.rows(xk, n, c), launch.rows(v, n, c),
                           launch.rows(keep, n, c), w_FD, *carry)

  s[...], z[...], m[...] = jax.lax.fori_loop(
      0, n_chunks, step, (jnp.zeros(s.shape, jnp.float32),
                          jnp.zeros(z.shape, jnp.float32),
                          jnp.full(m.shape, -jnp.inf, jnp.float32)))


def _attend_kernel(cfg, xq, w, s, z, out):
  out[...] = tiles.query_out(cfg, xq[...], w[...], s[...], z[...])[2]


def _query_bwd_kernel(cfg, c, n_chunks, xq, w, s, z, g, dxq, ds, dz):
  w_FD, s_FE, z_1F = w[...], s[...], z[...]

  def step(n, carry):
    ds_FE, dz_1F = carry
    rows = pl.ds(pl.multiple_of(n * c, c), c)
    dxq[rows, :], ds_tile, dz_tile = tiles.query_backward(
        cfg, xq[rows, :], w_FD, s_FE, z_1F, g[rows, :])
    return ds_FE + ds_tile, dz_1F + dz_tile

  ds[...], dz[...] = jax.lax.fori_loop(
      0, n_chunks, step, (jnp.zeros(ds.shape, jnp.float32),
                          jnp.zeros(dz.shape, jnp.float32)))


def _key_bwd_kernel(cfg, xk, v, keep, w, m, ds, dz, dxk, dv):
  xk_CD, keep_C1, w_FD, ds_FE = xk[...], keep[...], w[...], ds[...]
  kf, kt_CF = tiles.key_weights(cfg, xk_CD, keep_C1, w_FD, m[...])
  g_kt_CF = tiles.mm_nt(cfg, v[...], ds_FE) + dz[...]
  dv[...] = tiles.mm(cfg, kt_CF, ds_FE)
  dxk[...] = tiles.key_grad(cfg, xk_CD, keep_C1, w_FD, kf, kt_CF, g_kt_CF)


def _summary_call(static, xk, v, keep, w):
  """The keys' summary `(S [G, F, E], z [G, 1, F], m [G, 1, 1])`."""
  cfg, c, heads, on = static
  if on in pallas_tpu.PLATFORMS:
    return pallas_tpu.summary_call(static, xk, v, keep, w)
  g, ls, d = xk.shape
  e, f = v.shape[-1], w.shape[0]
  whole, f32 = launch.whole, launch.f32_like
  return launch.call(
      functools.partial(_summary_kernel, cfg, c, ls // c), grid=(g,),
      in_specs=_causal_specs(ls, d, e, f, heads, [])[1:],
      out_specs=[whole((f, e)), whole((1, f)), whole((1, 1))],
      out_shape=[f32((g, f, e), xk), f32((g, 1, f), xk), f32((g, 1, 1), xk)],
      on=on)(xk, v, keep, w)


def _query_bwd_call(static, xq, w, s, z, g_GLE):
  """`(dxq, dS, dz)` of the attended queries from their output cotangent."""
  cfg, c, _, on = static
  if on in pallas_tpu.PLATFORMS:
    return pallas_tpu.query_bwd_call(static, xq, w, s, z, g_GLE)
  grp, lq, d = xq.shape
  e, f = s.shape[-1], w.shape[0]
  whole, f32 = launch.whole, launch.f32_like
  return launch.call(
      functools.partial(_query_bwd_kernel, cfg, c, lq // c), grid=(grp,),
      in_specs=[whole((lq, d)), pl.BlockSpec((f, d), lambda *_: (0, 0)),
                whole((f, e)), whole((1, f)), whole((lq, e))],
      out_specs=[whole((lq, d)), whole((f, e)), whole((1, f))],
      out_shape=[f32((grp, lq, d), xq), f32((grp, f, e), xq),
                 f32((grp, 1, f), xq)], on=on)(xq, w, s, z, g_GLE)


def _key_bwd_call(static, xk, v, keep, w, m, ds, dz):
  """`(dxk, dv)` from the cotangents of a summary (ds, dz), a grid over key
  tiles that recomputes their features."""
  cfg, c, heads, on = static
  grp, ls, d = xk.shape
  e, f = v.shape[-1], w.shape[0]
  whole, tile, f32 = launch.whole, launch.tile, launch.f32_like
  return launch.call(
      functools.partial(_key_bwd_kernel, cfg), grid=(grp, ls // c),
      in_specs=[tile(c, d), tile(c, e),
                pl.BlockSpec((None, c, 1),
                             lambda i, n: (jax.lax.div(i, heads), n, 0)),
                pl.BlockSpec((f, d), lambda *_: (0, 0)), whole((1, 1)),
                whole((f, e)), whole((1, f))],
      out_specs=[tile(c, d), tile(c, e)],
      out_shape=[f32((grp, ls, d), xk), f32((grp, ls, e), xk)], on=on)(
          xk, v, keep, w, m, ds, dz)


def _attend_call(static, xq, w, s, z):
  """The queries' outputs against a summary `(S, z)`: a grid over tiles."""
  cfg, c, _, on = static
  g, lq, d = xq.shape
  e, f = s.shape[-1], w.shape[0]
  return launch.call(
      functools.partial(_attend_kernel, cfg), grid=(g, lq // c),
      in_specs=[launch.tile(c, d), pl.BlockSpec((f, d), lambda i, n: (0, 0)),
                launch.whole((f, e)), launch.whole((1, f))],
      out_specs=launch.tile(c, e),
      out_shape=launch.f32_like((g, lq, e), xq), on=on)(xq, w, s, z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def query_core(static, xq, w, s, z):
  """Bidirectional outputs of the queries against the summary `(S, z)`
  (`summary_core`'s); backward, `_query_bwd_call`'s walk."""
  return _attend_call(static, xq, w, s, z)


def _query_core_fwd(static, xq, w, s, z):
  return _attend_call(static, xq, w, s, z), (xq, w, s, z)


def _query_core_bwd(static, res, g_GLE):
  xq, w, s, z = res
  dxq, ds, dz = _query_bwd_call(static, xq, w, s, z, g_GLE)
  like = lambda x: vma.like(x, xq)
  return like(dxq), jnp.zeros_like(w), like(ds), like(dz)


query_core.defvjp(_query_core_fwd, _query_core_bwd)


# ------------------------------------------------------------- summary


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def summary_core(static, xk, v, keep, w):
  """`(S, z, m)` of the keys (`_summary_call`); m carries no gradient."""
  return _summary_call(static, xk, v, keep, w)


def _summary_core_fwd(static, xk, v, keep, w):
  s, z, m = _summary_call(static, xk, v, keep, w)
  return (s, z, m), (xk, v, keep, w, m)


def _summary_core_bwd(static, res, cotangents):
  xk, v, keep, w, m = res
  ds, dz, _ = cotangents
  dxk, dv = _key_bwd_call(static, xk, v, keep, w, m, ds, dz)
  like = lambda x: vma.like(x, xk)
  return like(dxk), like(dv), jnp.zeros_like(keep), jnp.zeros_like(w)


summary_core.defvjp(_summary_core_fwd, _summary_core_bwd)
