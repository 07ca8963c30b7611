"""Launching the FAVOR+ Pallas kernels: `pallas_call` per platform, and the
BlockSpecs and output types every kernel module shares (pallas_calls.py,
pallas_tpu.py). Arrays are grouped `[G = B*H, L, X]`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from performer_jax.attention import vma

# Triton launch options of every GPU kernel. A tile holds `[C, F]` float32
# features, the `[F, Dv]` state and their cotangents in registers: with 4
# warps ptxas cannot allocate the causal backward at C=64, F=256 (sm_90),
# and 2 stages need more shared memory than the 227 KiB a block may have
# (scripts/triton_check.py compiles them without a GPU).
GPU_OPTIONS = {"num_warps": 8, "num_stages": 1}
# The largest `C * F` of a GPU tile (pallas_favor.tile_rows): 32 registers
# a thread for one `[C, F]` float32 tile at 8 warps.
GPU_TILE_ELEMENTS = 8192
# The largest `F * (D + Dv)` a GPU serves (pallas_favor.supports): the
# projection and the summary are staged in shared memory for their
# products, and past this the query backward needs more than 227 KiB
# whatever the tile (D128 m256: 287 KiB; D128 m128 and D32 m512 fit).
GPU_SUMMARY_ELEMENTS = 32768


def call(body, *, grid, in_specs, out_specs, out_shape, on,
         sequential: int = 0, scratch_shapes=()):
  """`pallas_call(body, ...)` for platform `on` (pallas_favor.platform, or
  "tpu_interpret": pallas_tpu.py's kernels in interpret mode), as a
  function of the kernel's inputs. The last `sequential` grid axes walk in
  order (TPU "arbitrary"), the others are parallel."""
  kw = {"scratch_shapes": tuple(scratch_shapes)}
  if on == "gpu":
    from jax.experimental.pallas import triton as pltriton
    kw["compiler_params"] = pltriton.CompilerParams(**GPU_OPTIONS)
  elif on == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    kw["compiler_params"] = pltpu.CompilerParams(
        dimension_semantics=(("parallel",) * (len(grid) - sequential) +
                             ("arbitrary",) * sequential))

  def run(*args):
    interpret = {}
    if on in ("interpret", "tpu_interpret"):
      # Inside shard_map, Mosaic TPU's interpreter: the generic one loses
      # the varying axes of its loop carries there (JAX 0.10). Not outside:
      # the TPU one keeps state sized by the first call's device count.
      interpret["interpret"] = True
      if vma.varying_axes(*args):
        from jax.experimental.pallas import tpu as pltpu
        interpret["interpret"] = pltpu.InterpretParams()
    return pl.pallas_call(body, grid=grid, in_specs=in_specs,
                          out_specs=out_specs, out_shape=out_shape,
                          **kw, **interpret)(*args)
  return run


def whole(shape):
  """BlockSpec of one (batch, head)'s whole array `[G, *shape]`."""
  zeros = (0,) * len(shape)
  return pl.BlockSpec((None,) + tuple(shape), lambda g, *_: (g,) + zeros)


def tile(c, width):
  """BlockSpec of tile n of `[G, L, width]` on a (g, n) grid."""
  return pl.BlockSpec((None, c, width), lambda g, n: (g, n, 0))


def f32_like(shape, like, dtype=jnp.float32):
  """A float32 (or `dtype`) output typed as `like` inside `shard_map`
  (varying along the same mesh axes: every input is cast to one type
  first, vma.align)."""
  mat = getattr(jax.typeof(like), "mat", None)
  if mat is None:
    return jax.ShapeDtypeStruct(shape, dtype)
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)


def rows(ref, n, c):
  """Rows `n*C .. n*C + C` of a whole-sequence block."""
  return ref[pl.ds(pl.multiple_of(n * c, c), c), :]
