"""FAVOR+ kernels on a (batch*head, chunk) grid, for Mosaic TPU.

pallas_calls.py's kernels walk one (batch, head)'s whole sequence held in a
block, which VMEM bounds. Here the grid's second axis walks the chunks in
order ("arbitrary": sequential on a core) with the state `(S, z, m)` (or
its cotangent) in VMEM scratch, so a block is one chunk and L is unbounded:
the causal pass and its backward, and the bidirectional key summary and
query backward (pallas_calls.py picks these on TPU). The tile math is the
same (pallas_tiles.py); the stored entry states are `[G, N, F, E]`,
`[G, N, 1, F]` and `[G, N, 1, 1]`, so that every block's last two dims are
whole, as Mosaic's tiling asks. Triton has no sequential grid axis: the GPU
keeps the whole-sequence kernels. Platform "tpu_interpret" runs these on
the CPU, for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from performer_jax.attention import pallas_launch as launch
from performer_jax.attention import pallas_tiles as tiles

PLATFORMS = ("tpu", "tpu_interpret")


def _chunk_specs(c, d, e, f, heads, n_chunks, reverse):
  """BlockSpecs of chunk n's q, k, v and keep tiles and the projection
  (chunk N-1-n when `reverse`)."""
  at = (lambda n: n_chunks - 1 - n) if reverse else (lambda n: n)
  tile = lambda w: pl.BlockSpec((None, c, w), lambda g, n: (g, at(n), 0))
  return [tile(d), tile(d), tile(e),
          pl.BlockSpec((None, c, 1),
                       lambda g, n: (jax.lax.div(g, heads), at(n), 0)),
          pl.BlockSpec((f, d), lambda g, n: (0, 0))], tile, at


def _per_chunk(shape, at):
  """BlockSpec of chunk n's entry in a `[G, N, *shape]` array."""
  zeros = (0,) * len(shape)
  return pl.BlockSpec((None, None) + tuple(shape),
                      lambda g, n: (g, at(n)) + zeros)


def _state_scratch(f, e):
  return [pltpu.VMEM((f, e), jnp.float32), pltpu.VMEM((1, f), jnp.float32),
          pltpu.VMEM((1, 1), jnp.float32)]


def _fwd_kernel(cfg, store, xq, xk, v, keep, w, s0, z0, m0, out, *refs):
  *stored, s_scr, z_scr, m_scr = refs

  @pl.when(pl.program_id(1) == 0)
  def _():
    s_scr[...], z_scr[...], m_scr[...] = s0[...], z0[...], m0[...]

  s_FE, z_1F, m_11 = s_scr[...], z_scr[...], m_scr[...]
  t = tiles.chunk(cfg, xq[...], xk[...], keep[...], w[...], m_11)
  v_CE = v[...]
  out[...] = tiles.attend(cfg, t, v_CE, s_FE, z_1F).out
  if store:
    s_in, z_in, m_in = stored
    s_in[...], z_in[...], m_in[...] = s_FE.astype(s_in.dtype), z_1F, m_11
  s_scr[...], z_scr[...] = tiles.carry(cfg, t, v_CE, s_FE, z_1F)
  m_scr[...] = t.m_out


def _bwd_kernel(cfg, n_chunks, xq, xk, v, keep, w, s_in, z_in, m_in, g, dxq,
                dxk, dv, ds0, dz0, ds_scr, dz_scr):
  @pl.when(pl.program_id(1) == 0)
  def _():
    ds_scr[...] = jnp.zeros(ds_scr.shape, jnp.float32)
    dz_scr[...] = jnp.zeros(dz_scr.shape, jnp.float32)

  dxq[...], dxk[...], dv[...], ds_FE, dz_1F = tiles.chunk_backward(
      cfg, xq[...], xk[...], v[...], keep[...], w[...], m_in[...], s_in[...],
      z_in[...], g[...], ds_scr[...], dz_scr[...])
  ds_scr[...], dz_scr[...] = ds_FE, dz_1F

  @pl.when(pl.program_id(1) == n_chunks - 1)
  def _():
    ds0[...], dz0[...] = ds_FE, dz_1F


def causal_forward(static, xq, xk, v, keep, w, s0, z0, m0, store):
  """pallas_calls' causal forward, walking the chunk grid."""
  cfg, c, heads, on = static
  g, lp, d = xq.shape
  e, f, n = v.shape[-1], w.shape[0], lp // c
  in_specs, tile, at = _chunk_specs(c, d, e, f, heads, n, reverse=False)
  seed = [launch.whole((f, e)), launch.whole((1, f)), launch.whole((1, 1))]
  out_shape = [launch.f32_like((g, lp, e), xq)]
  out_specs = [tile(e)]
  if store:
    out_shape += [launch.f32_like((g, n, f, e), xq, tiles.state_dtype(cfg)),
                  launch.f32_like((g, n, 1, f), xq),
                  launch.f32_like((g, n, 1, 1), xq)]
    out_specs += [_per_chunk((f, e), at), _per_chunk((1, f), at),
                  _per_chunk((1, 1), at)]
  return launch.call(
      functools.partial(_fwd_kernel, cfg, store), grid=(g, n),
      in_specs=in_specs + seed, out_specs=out_specs, out_shape=out_shape,
      on=on, sequential=1, scratch_shapes=_state_scratch(f, e))(
          xq, xk, v, keep, w, s0, z0, m0)


def causal_backward(static, xq, xk, v, keep, w, s_in, z_in, m_in, g_GLE):
  """pallas_calls' causal backward, walking the chunk grid in reverse."""
  cfg, c, heads, on = static
  grp, lp, d = xq.shape
  e, f, n = v.shape[-1], w.shape[0], lp // c
  in_specs, tile, at = _chunk_specs(c, d, e, f, heads, n, reverse=True)
  state_specs = [_per_chunk((f, e), at), _per_chunk((1, f), at),
                 _per_chunk((1, 1), at), tile(e)]
  whole, f32 = launch.whole, launch.f32_like
  return launch.call(
      functools.partial(_bwd_kernel, cfg, n), grid=(grp, n),
      in_specs=in_specs + state_specs,
      out_specs=[tile(d), tile(d), tile(e), whole((f, e)), whole((1, f))],
      out_shape=[f32((grp, lp, d), xq), f32((grp, lp, d), xq),
                 f32((grp, lp, e), xq), f32((grp, f, e), xq),
                 f32((grp, 1, f), xq)],
      on=on, sequential=1, scratch_shapes=_state_scratch(f, e)[:2])(
          xq, xk, v, keep, w, s_in, z_in, m_in, g_GLE)


# Bidirectional: the two walks over a whole sequence, on the chunk grid
# (the attend and key-gradient kernels are tile grids on every backend).


def _summary_kernel(cfg, n_chunks, xk, v, keep, w, s, z, m, s_scr, z_scr,
                    m_scr):
  @pl.when(pl.program_id(1) == 0)
  def _():
    s_scr[...] = jnp.zeros(s_scr.shape, jnp.float32)
    z_scr[...] = jnp.zeros(z_scr.shape, jnp.float32)
    m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)

  s_scr[...], z_scr[...], m_scr[...] = tiles.summarize(
      cfg, xk[...], v[...], keep[...], w[...], s_scr[...], z_scr[...],
      m_scr[...])

  @pl.when(pl.program_id(1) == n_chunks - 1)
  def _():
    s[...], z[...], m[...] = s_scr[...], z_scr[...], m_scr[...]


def summary_call(static, xk, v, keep, w):
  """pallas_calls' key summary `(S, z, m)`, walking the chunk grid."""
  cfg, c, heads, on = static
  g, ls, d = xk.shape
  e, f, n = v.shape[-1], w.shape[0], ls // c
  in_specs = _chunk_specs(c, d, e, f, heads, n, reverse=False)[0][1:]
  whole, f32 = launch.whole, launch.f32_like
  return launch.call(
      functools.partial(_summary_kernel, cfg, n), grid=(g, n),
      in_specs=in_specs,
      out_specs=[whole((f, e)), whole((1, f)), whole((1, 1))],
      out_shape=[f32((g, f, e), xk), f32((g, 1, f), xk), f32((g, 1, 1), xk)],
      on=on, sequential=1, scratch_shapes=_state_scratch(f, e))(
          xk, v, keep, w)


def _query_bwd_kernel(cfg, n_chunks, xq, w, s, z, g, dxq, ds, dz, ds_scr,
                      dz_scr):
  @pl.when(pl.program_id(1) == 0)
  def _():
    ds_scr[...] = jnp.zeros(ds_scr.shape, jnp.float32)
    dz_scr[...] = jnp.zeros(dz_scr.shape, jnp.float32)

  dxq[...], ds_tile, dz_tile = tiles.query_backward(
      cfg, xq[...], w[...], s[...], z[...], g[...])
  ds_scr[...] += ds_tile
  dz_scr[...] += dz_tile

  @pl.when(pl.program_id(1) == n_chunks - 1)
  def _():
    ds[...], dz[...] = ds_scr[...], dz_scr[...]


def query_bwd_call(static, xq, w, s, z, g_GLE):
  """pallas_calls' query backward `(dxq, dS, dz)`, on the chunk grid."""
  cfg, c, _, on = static
  grp, lq, d = xq.shape
  e, f, n = s.shape[-1], w.shape[0], lq // c
  tile = lambda width: pl.BlockSpec((None, c, width), lambda i, k: (i, k, 0))
  whole, f32 = launch.whole, launch.f32_like
  return launch.call(
      functools.partial(_query_bwd_kernel, cfg, n), grid=(grp, n),
      in_specs=[tile(d), pl.BlockSpec((f, d), lambda *_: (0, 0)),
                whole((f, e)), whole((1, f)), tile(e)],
      out_specs=[tile(d), whole((f, e)), whole((1, f))],
      out_shape=[f32((grp, lq, d), xq), f32((grp, f, e), xq),
                 f32((grp, 1, f), xq)],
      on=on, sequential=1, scratch_shapes=_state_scratch(f, e)[:2])(
          xq, w, s, z, g_GLE)
