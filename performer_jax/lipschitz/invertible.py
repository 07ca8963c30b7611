"""Invertible residual maps y = x + g(x) with Lip(g) < 1 (i-ResNet style).

If Lip(g) = c < 1, x -> x + g(x) is a bijection and its inverse at y is the
fixed point of x -> y - g(x), reached by iteration from any start (Banach),
with ||x_k - x*|| <= c^k / (1 - c) ||x_1 - x_0||: c near 1 needs many steps.
`fixed_point_inverse` takes g as a function (e.g. a closure over a Flax
module's `apply`). The stopping tolerance is
`max(atol + rtol * max|y|, RESOLUTION_ULPS * eps(dtype) * max|y|)`: rounding
can keep a step one or two ulps from the fixed point forever, so a tighter
request is raised to the floor, not refused (`InverseInfo.tolerance`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# Rounding of y - g(x) near the fixed point (a few ulps of max|y| for the
# subtraction, more for the sums inside g) with a margin: 16 ulps.
RESOLUTION_ULPS = 16


class InverseInfo(NamedTuple):
  """Diagnostics of a fixed-point inversion (a pytree, usable under jit).

  Attributes:
    converged: bool scalar, True if the last step max|x_{k+1} - x_k| was at
      most atol + rtol * max|y| before max_iters ran out.
    num_iters: int32 scalar, iterations done (evaluations of g).
    residual: float32 scalar, max|x + g(x) - y| at the returned x.
    tolerance: float32 scalar, the stopping tolerance used: the requested
      `atol + rtol * max|y|`, or the dtype's resolution floor if larger.
  """
  converged: jax.Array
  num_iters: jax.Array
  residual: jax.Array
  tolerance: jax.Array


def _max_abs(a):
  return jnp.max(jnp.abs(a)).astype(jnp.float32)


def resolution_floor(y: jax.Array) -> jax.Array:
  """The smallest step tolerance `fixed_point_inverse` honours for `y`.

  `RESOLUTION_ULPS * eps(y.dtype) * max|y|`, at least the dtype's smallest
  normal number (so an all-zero y still gets a positive floor), as a float32
  scalar.
  """
  finfo = jnp.finfo(y.dtype)
  return jnp.maximum(jnp.float32(RESOLUTION_ULPS * float(finfo.eps))
                     * _max_abs(y), jnp.float32(finfo.tiny))


def fixed_point_inverse(g: Callable[[jax.Array], jax.Array], y: jax.Array, *,
                        max_iters: int = 100, atol: float = 1e-6,
                        rtol: float = 1e-6,
                        x0: jax.Array | None = None
                        ) -> tuple[jax.Array, InverseInfo]:
  """Solves x + g(x) = y by x <- y - g(x).

  Args:
    g: the residual branch, same input and output shape; must be a
      contraction for the iteration to be guaranteed to converge.
    y: the output to invert (any shape).
    max_iters: maximum number of iterations (>= 1).
    atol, rtol: stop when max|x_{k+1} - x_k| <= atol + rtol * max|y|. The
      step equals the residual of x_k, so the returned x_{k+1} has residual
      at most Lip(g) times the tolerance. A request below the dtype's
      resolution (`resolution_floor(y)`) is raised to it.
    x0: starting point (default: y, i.e. the first iterate is y - g(y)).

  Returns:
    (x, InverseInfo). x is the last iterate; check `info.converged`: when
    max_iters runs out first it is False and x is only approximate.
  """
  if max_iters < 1:
    raise ValueError(f"max_iters must be >= 1, got {max_iters}")
  if atol < 0 or rtol < 0:
    raise ValueError(f"atol and rtol must be >= 0, got {atol}, {rtol}")
  x = y if x0 is None else x0
  tol = jnp.maximum(jnp.float32(atol) + jnp.float32(rtol) * _max_abs(y),
                    resolution_floor(y))

  def cond(state):
    _, step, k = state
    return (k < max_iters) & (step > tol)

  def body(state):
    x, _, k = state
    x_new = y - g(x)
    return x_new, _max_abs(x_new - x), k + 1

  init = (x, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32))
  x, step, k = jax.lax.while_loop(cond, body, init)
  residual = _max_abs(x + g(x) - y)
  return x, InverseInfo(converged=step <= tol, num_iters=k, residual=residual,
                       tolerance=tol)


class InvertibleResidual(nn.Module):
  """y = x + branch(x, **kwargs), with an `inverse` method.

  The branch must be contractive (e.g. `ContractiveL2Attention` or
  `ContractiveMlp`) and deterministic (no dropout inside it): the inverse
  re-evaluates it.

  Attributes:
    branch: the residual branch g, a module mapping x to x's shape.

  Params: {"branch": the branch's params}.
  """
  branch: nn.Module

  def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
    return x + self.branch(x, **kwargs)

  def inverse(self, y: jax.Array, *, max_iters: int = 100,
              atol: float = 1e-6, rtol: float = 1e-6,
              **kwargs) -> tuple[jax.Array, InverseInfo]:
    """x with x + branch(x) = y, by fixed-point iteration.

    Call through `apply(variables, y, method=InvertibleResidual.inverse)`.
    `kwargs` go to the branch (e.g. key_mask).

    Returns:
      (x, InverseInfo); see `fixed_point_inverse`.
    """
    if self.is_initializing():
      raise ValueError("initialize with __call__, then call inverse on the "
                       "initialized variables")
    variables = self.branch.variables
    apply = self.branch.clone(parent=None).apply
    g = lambda x: apply(variables, x, **kwargs)
    return fixed_point_inverse(g, y, max_iters=max_iters, atol=atol,
                               rtol=rtol)
