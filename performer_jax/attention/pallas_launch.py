"""Launching the FAVOR+ Pallas kernels: `pallas_call` per platform, and the
BlockSpecs and output types every kernel module shares (pallas_calls.py,
pallas_tpu.py). Arrays are grouped `[G = B*H, L, X]`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from performer_jax.attention import vma


def call(body, *, grid, in_specs, out_specs, out_shape, on,
         sequential: int = 0, scratch_shapes=()):
  """`pallas_call(body, ...)` for platform `on` (pallas_favor.platform, or
  "tpu_interpret": pallas_tpu.py's kernels in interpret mode), as a
  function of the kernel's inputs. The last `sequential` grid axes walk in
  order (TPU "arbitrary"), the others are parallel."""
  kw = {"scratch_shapes": tuple(scratch_shapes)}
  if on == "gpu":
    from jax.experimental.pallas import triton as pltriton
    kw["compiler_params"] = pltriton.CompilerParams(num_warps=4,
                                                    num_stages=2)
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
