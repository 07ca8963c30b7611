"""Empirical lower bounds on Lipschitz constants: max_X ||J_f(X)||_p.

Lip_p(f) = sup_X ||J_f(X)||_p for f: R^{N x D} -> R^{N x O}, J_f(X) the
[N*O, N*D] Jacobian of the row-major flattened map, so any X gives a lower
bound; Adam on X, restarts in parallel (vmap), finds good ones (Kim et al.
2021, Section 6). Objectives: "full", the exact norm (jacfwd, (N D)^2 times
the cost of f); "first_token" (inf norm), token 0's rows, one reverse pass,
with the full norm's max over X for permutation-equivariant f (no masks or
positions); "jvp" (2-norm), ||J u|| / ||u|| with u optimised too; "auto",
"full" when N * D <= 32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Map = Callable[[jax.Array], jax.Array]
OBJECTIVES = ("auto", "full", "first_token", "jvp")
_FULL_MAX_SIZE = 32


def jacobian_matrix(f: Map, x_ND: jax.Array) -> jax.Array:
  """The Jacobian [N*O, N*D] of x_ND -> f(x_ND).ravel() at x_ND."""
  n, d = x_ND.shape
  flat = lambda x_flat: f(x_flat.reshape(n, d)).ravel()
  return jax.jacfwd(flat)(x_ND.ravel())


def operator_norm(m_XY: jax.Array, norm: str) -> jax.Array:
  """Induced matrix norm: "inf" (max abs row sum) or "2" (spectral)."""
  if norm == "inf":
    return jnp.max(jnp.sum(jnp.abs(m_XY), axis=-1))
  if norm == "2":
    return jnp.linalg.norm(m_XY, ord=2)
  raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")


def jacobian_norm(f: Map, x_ND: jax.Array, norm: str = "inf") -> jax.Array:
  """||J_f(x_ND)||_norm of the flattened map (a lower bound of Lip_norm)."""
  return operator_norm(jacobian_matrix(f, x_ND), norm)


def first_token_inf_norm(f: Map, x_ND: jax.Array,
                         first_row_fn: Callable[[jax.Array], jax.Array]
                         | None = None) -> jax.Array:
  """Max over o of sum_{m,d} |d f(X)[0, o] / d X[m, d]| (rows of token 0).

  `first_row_fn(x_ND) -> [O]`, if given, must equal f(x_ND)[0]; it lets a
  cheaper single-row computation replace the full map.
  """
  row_fn = first_row_fn or (lambda x: f(x)[0])
  rows_OND = jax.jacrev(row_fn)(x_ND)
  return jnp.max(jnp.sum(jnp.abs(rows_OND), axis=(1, 2)))


def jvp_ratio(f: Map, x_ND: jax.Array, u_ND: jax.Array) -> jax.Array:
  """||J_f(X) u||_2 / ||u||_2, a lower bound of ||J_f(X)||_2."""
  _, ju = jax.jvp(f, (x_ND,), (u_ND,))
  return jnp.linalg.norm(ju.ravel()) / jnp.linalg.norm(u_ND.ravel())


@dataclasses.dataclass(frozen=True)
class LowerBoundResult:
  """Outcome of `search_lower_bound`.

  Attributes:
    value: best ||J_f(X)||_p found (exact norm at `x` when N * D is small
      enough to form the Jacobian, else the objective's value).
    x: float32 [N, D] numpy array, the input that reached `value`.
    restart_values: float [R] best objective per restart.
    objective: the objective that was optimised.
  """
  value: float
  x: np.ndarray
  restart_values: np.ndarray
  objective: str


def _resolve_objective(objective, norm, size):
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got "
                     f"{objective!r}")
  if norm not in ("inf", "2"):
    raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")
  if objective == "auto":
    if size <= _FULL_MAX_SIZE:
      return "full"
    return "first_token" if norm == "inf" else "jvp"
  if (objective, norm) in (("first_token", "2"), ("jvp", "inf")):
    raise ValueError(f"objective {objective!r} does not apply to norm "
                     f"{norm!r}")
  return objective


def search_lower_bound(f: Map, *, num_tokens: int, dim: int,
                       rng: jax.Array, norm: str = "inf",
                       num_restarts: int = 8, num_steps: int = 300,
                       learning_rate: float = 0.05,
                       init_scale: float | tuple[float, float] = (0.3, 3.0),
                       objective: str = "auto",
                       first_row_fn: Callable[[jax.Array], jax.Array]
                       | None = None,
                       verify_max_size: int = 256) -> LowerBoundResult:
  """Maximises ||J_f(X)||_norm over X in R^{N x D} by Adam ascent.

  Args:
    f: map float32 [N, D] -> [N, O] (pure; closes over its weights).
    num_tokens: N.
    dim: D.
    rng: PRNG key for the restarts' initial inputs.
    norm: "inf" or "2".
    num_restarts: independent ascents, run in parallel with vmap.
    num_steps: Adam steps per restart.
    learning_rate: Adam step size.
    init_scale: std of the Gaussian initial X; a (lo, hi) pair spreads the
      restarts log-uniformly over that range (the optimum's scale grows with
      N, and the landscape is flat for inputs that are too spread out).
    objective: see the module docstring.
    first_row_fn: optional cheaper equivalent of `lambda x: f(x)[0]` for the
      "first_token" objective (e.g. `maps.l2_mha_first_row`).
    verify_max_size: if N * D is at most this, the returned value is the exact
      norm of the full Jacobian at the best X (>= the objective for
      "first_token" and "jvp").

  Returns:
    LowerBoundResult with the best value and the input reaching it.
  """
  if num_tokens < 1 or dim < 1 or num_restarts < 1 or num_steps < 0:
    raise ValueError(
        "num_tokens, dim and num_restarts must be >= 1 and num_steps >= 0; "
        f"got {num_tokens}, {dim}, {num_restarts}, {num_steps}")
  objective = _resolve_objective(objective, norm, num_tokens * dim)
  if objective == "full":
    value_fn = lambda x, u: jacobian_norm(f, x, norm)
  elif objective == "first_token":
    value_fn = lambda x, u: first_token_inf_norm(f, x, first_row_fn)
  else:
    value_fn = lambda x, u: jvp_ratio(f, x, u)

  lo, hi = ((init_scale, init_scale) if isinstance(init_scale, (int, float))
            else init_scale)
  k_x, k_u, k_s = jax.random.split(rng, 3)
  shape = (num_restarts, num_tokens, dim)
  log_scale = jax.random.uniform(k_s, (num_restarts, 1, 1),
                                 minval=math.log(lo), maxval=math.log(hi))
  x0 = jax.random.normal(k_x, shape) * jnp.exp(log_scale)
  u0 = jax.random.normal(k_u, shape)
  opt = optax.adam(learning_rate)

  def ascend(x, u):
    params = (x, u)
    state = opt.init(params)
    best = (value_fn(x, u), x)

    def step(carry, _):
      params, state, best = carry
      val, grads = jax.value_and_grad(lambda p: -value_fn(*p))(params)
      val = -val
      better = val > best[0]
      best = (jnp.where(better, val, best[0]),
              jnp.where(better, params[0], best[1]))
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state, best), None

    (params, _, best), _ = jax.lax.scan(step, (params, state, best), None,
                                        length=num_steps)
    final = value_fn(*params)
    better = final > best[0]
    return (jnp.where(better, final, best[0]),
            jnp.where(better, params[0], best[1]))

  values, xs = jax.jit(jax.vmap(ascend))(x0, u0)
  values = np.asarray(values)
  i = int(np.nanargmax(values))
  x_best = np.asarray(xs[i], np.float32)
  value = float(values[i])
  if num_tokens * dim <= verify_max_size and objective != "full":
    value = max(value, float(jacobian_norm(f, jnp.asarray(x_best), norm)))
  return LowerBoundResult(value=value, x=x_best, restart_values=values,
                          objective=objective)
