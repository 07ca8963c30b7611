"""Experiment 2: dot-product attention's Jacobian is unbounded, L2's is not.

Kim et al. (2021), Section 3: with D = 1 and f(X) = softmax(X X^T) X, take
x_1 = 0. Its attention row is uniform, and d f_1 / d x_1 = 1/N + Var_j(x_j),
which grows without bound as the other inputs spread out. We measure the full
Jacobian's inf- and 2-norm at growing spread s for two input families,

  sym3:     X = (0, s, -s)  (N = 3; d f_1 / d x_1 = 1/3 + 2 s^2 / 3 exactly)
  gaussian: x_1 = 0, x_2..x_N = s z with z ~ N(0, 1), N = --n (default 10),
            `--draws` independent draws of z: mean and max over them,

and, on the very same inputs, the Jacobian norms of L2 attention with unit
weights (D = H = 1), which stay below the Theorem 3.2 bound.

It also runs the lower-bound search (Adam ascent on X, `--search-restarts`
restarts) on both maps with N = --n for growing step budgets: for dot-product
attention the best ||J||_inf keeps growing with the budget (the inputs spread
out), for L2 it saturates below the bound (dot_product_search.csv).

  python -m experiments.lipschitz.dot_product_growth --out results/lipschitz
  python -m experiments.lipschitz.dot_product_growth --quick
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from performer_jax.lipschitz import bounds
from performer_jax.lipschitz import jacobian
from performer_jax.lipschitz import maps


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/lipschitz")
  p.add_argument("--spreads", default="0.3,1,3,10,30,100")
  p.add_argument("--n", type=int, default=10,
                 help="tokens of the gaussian family")
  p.add_argument("--draws", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--search-steps", default="100,300,1000")
  p.add_argument("--search-restarts", type=int, default=8)
  p.add_argument("--quick", action="store_true",
                 help="spreads 1, 3, 10, 30 and 4 draws")
  return p.parse_args(argv)


def _norms_fn():
  """jit(vmap(x -> [dot inf, dot 2, l2 inf, l2 2])) over inputs [S, N, 1]."""
  f_dot = functools.partial(maps.dot_product_mha,
                            maps.unit_dot_product_params())
  f_l2 = functools.partial(maps.l2_mha, maps.unit_l2_params())

  def norms(x_ND):
    out = []
    for f in (f_dot, f_l2):
      jac = jacobian.jacobian_matrix(f, x_ND)
      out += [jacobian.operator_norm(jac, "inf"),
              jacobian.operator_norm(jac, "2")]
    return jnp.stack(out)

  return jax.jit(jax.vmap(norms))


def run(args) -> list[dict]:
  spreads = [1.0, 3.0, 10.0, 30.0] if args.quick else common.float_list(
      args.spreads)
  draws = 4 if args.quick else args.draws
  norms = _norms_fn()
  unit = maps.unit_l2_params()
  rows = []
  # sym3: one input per spread.
  x_sym = jnp.asarray([[[0.0], [s], [-s]] for s in spreads])
  sym = np.asarray(norms(x_sym))
  for s, (d_inf, d_2, l_inf, l_2) in zip(spreads, sym):
    rows.append(_row("sym3", 3, s, 1, d_inf, d_inf, d_2, l_inf, l_2, unit))
  # gaussian: the same draws z for every spread, so only s changes.
  z = jax.random.normal(jax.random.PRNGKey(args.seed),
                        (draws, args.n - 1, 1))
  for s in spreads:
    x = jnp.concatenate([jnp.zeros((draws, 1, 1)), s * z], axis=1)
    res = np.asarray(norms(x))
    rows.append(_row("gaussian", args.n, s, draws, res[:, 0].mean(),
                     res[:, 0].max(), res[:, 1].max(), res[:, 2].max(),
                     res[:, 3].max(), unit))
  for r in rows:
    print(r, flush=True)
  return rows


def search(args) -> list[dict]:
  """Lower-bound search on dot-product and L2 attention vs step budget."""
  budgets = [30, 100] if args.quick else common.int_list(args.search_steps)
  maps_by_kind = {
      "dot": functools.partial(maps.dot_product_mha,
                               maps.unit_dot_product_params()),
      "l2": functools.partial(maps.l2_mha, maps.unit_l2_params()),
  }
  bound = float(bounds.l2_mha_bound_from_variables(
      maps.unit_l2_params(), num_tokens=args.n))
  rows = []
  for kind, f in maps_by_kind.items():
    for steps in budgets:
      result = jacobian.search_lower_bound(
          f, num_tokens=args.n, dim=1, rng=jax.random.PRNGKey(args.seed),
          num_restarts=args.search_restarts, num_steps=steps,
          objective="first_token")
      rows.append({"kind": kind, "n": args.n, "steps": steps,
                   "best_inf_norm": round(result.value, 3),
                   "best_input_spread": round(float(np.ptp(result.x)), 3),
                   "l2_inf_bound": round(bound, 4)})
      print(rows[-1], flush=True)
  return rows


def _row(family, n, s, draws, dot_inf_mean, dot_inf_max, dot_2_max,
         l2_inf_max, l2_2_max, unit):
  return {
      "family": family, "n": n, "spread": s, "draws": draws,
      "dot_inf_mean": round(float(dot_inf_mean), 3),
      "dot_inf_max": round(float(dot_inf_max), 3),
      "dot_2_max": round(float(dot_2_max), 3),
      "l2_inf_max": round(float(l2_inf_max), 4),
      "l2_2_max": round(float(l2_2_max), 4),
      "l2_inf_bound": round(float(bounds.l2_mha_bound_from_variables(
          unit, num_tokens=n, norm="inf")), 4),
      "l2_2_bound": round(float(bounds.l2_mha_bound_from_variables(
          unit, num_tokens=n, norm="2")), 4),
  }


def plot(rows, path):
  fig, ax = common.plt.subplots(figsize=(5.5, 3.8))
  for family, marker in (("sym3", "o"), ("gaussian", "s")):
    sub = [r for r in rows if r["family"] == family]
    s = [r["spread"] for r in sub]
    label_n = f"N={sub[0]['n']}"
    ax.plot(s, [r["dot_inf_mean"] for r in sub], marker + "-",
            label=f"dot-product, {family} ({label_n})")
    ax.plot(s, [r["l2_inf_max"] for r in sub], marker + "--",
            label=f"L2, {family} ({label_n})")
    ax.axhline(sub[0]["l2_inf_bound"], ls=":", color="gray")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("spread s of the inputs (x_1 = 0)")
  ax.set_ylabel("||J_f(X)||_inf")
  ax.set_title("Dot-product grows like s^2; L2 stays below its bound (:)")
  ax.legend(fontsize=7)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  common.write_csv(os.path.join(args.out, "dot_product_growth.csv"), rows)
  plot(rows, os.path.join(args.out, "dot_product_growth.png"))
  common.write_csv(os.path.join(args.out, "dot_product_search.csv"),
                   search(args))


if __name__ == "__main__":
  main()
