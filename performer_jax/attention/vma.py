"""Varying manual axes: the types a custom VJP must keep inside `shard_map`.

Inside `jax.shard_map` (with its default `check_vma=True`) every array's type
records the mesh axes along which its value differs from device to device
(`jax.typeof(x).mat.varying`, formerly `.vma`). JAX checks these types where
it cannot infer them: a `jax.custom_vjp` backward rule must return
cotangents of exactly its inputs' types, a `lax.scan` carry must keep its
type, and an XLA FFI call returns arrays typed as invariant whatever its
inputs. Outside `shard_map` every set is empty and these helpers do nothing.

The rule used by every custom VJP here: cast all differentiable inputs to
the union of their varying axes *before* the custom VJP (`align`). The cast
is an ordinary JAX op outside the custom rule, so autodiff transposes it (a
`psum` of the cotangent over the axes an input did not vary along, which is
exactly the gradient of a replicated input used by every device). Inside the
rule everything then has one type, and `like` casts the few values the rule
creates from constants (or an FFI call returns) to it.
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
