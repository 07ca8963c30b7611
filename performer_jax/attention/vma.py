"""Varying manual axes: the types a custom VJP must keep inside `shard_map`.

Inside `jax.shard_map` (`check_vma=True`) an array's type records the mesh
axes its value varies along (`jax.typeof(x).mat.varying`; outside: none).
JAX checks these where it cannot infer them: custom-VJP cotangents must have
their inputs' types, scan carries keep theirs, FFI calls return invariant
arrays. Every custom VJP here: `align` casts all differentiable inputs to the
union of their varying axes *before* the custom VJP, so autodiff transposes
the cast (the `psum` a replicated input's gradient needs); inside, `like`
casts values made from constants (or FFI results) to that type.
"""

from __future__ import annotations

import jax


def varying_axes(*xs) -> frozenset:
  """The mesh axes any of the arrays `xs` (None entries skipped) varies
  along; empty outside `shard_map`."""
  axes = frozenset()
  for x in xs:
    if x is None:
      continue
    aval = jax.typeof(x)
    manual = getattr(aval, "mat", None)
    varying = (manual.varying if manual is not None
               else getattr(aval, "vma", frozenset()))
    axes |= frozenset(varying)
  return axes


def vary(x: jax.Array | None, axes: frozenset) -> jax.Array | None:
  """`x` cast to vary along `axes` too (a no-op for axes it varies along)."""
  if x is None:
    return None
  missing = tuple(sorted(axes - varying_axes(x), key=str))
  if not missing:
    return x
  return jax.lax.pcast(x, missing, to="varying")


def align(*xs):
  """The arrays `xs` (None kept as None), each cast to the union of their
  varying axes."""
  axes = varying_axes(*xs)
  return tuple(vary(x, axes) for x in xs)


def like(x: jax.Array | None, *refs) -> jax.Array | None:
  """`x` cast to vary along every axis the arrays `refs` vary along."""
  return vary(x, varying_axes(*refs))
