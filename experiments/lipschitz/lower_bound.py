"""Experiment 1: empirical lower bound vs Theorem 3.2 upper bound of L2-MHA.

Kim et al. (2021), Figure 2: with D = H = 1 and all weights 1, maximize
||J_f(X)||_inf over X in R^N (Adam ascent, several restarts in parallel) and
compare with the inf-norm upper bound 4 W_0((N-1)/e) + 1, for N up to 1000.
Both grow like log N. The paper used 50 restarts; the default here is fewer
(under a minute on 2 CPU cores); `--restarts 50 --steps 1000` to go bigger.

For the inf norm the search maximizes the Jacobian rows of token 0 only,
computed in O(N) by `maps.l2_mha_first_row`: L2 attention is permutation
equivariant, so this has the same maximum as the full Jacobian norm, and for
N <= 256 the reported value is re-checked on the full Jacobian.

  python -m experiments.lipschitz.lower_bound --out results/lipschitz
  python -m experiments.lipschitz.lower_bound --quick
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax

from experiments import common
from performer_jax.lipschitz import bounds
from performer_jax.lipschitz import jacobian
from performer_jax.lipschitz import maps


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/lipschitz")
  p.add_argument("--ns", default="3,5,10,20,30,50,100,200,300,500,1000",
                 help="comma-separated numbers of tokens N")
  p.add_argument("--norm", default="inf", choices=bounds.NORMS)
  p.add_argument("--restarts", type=int, default=16)
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="N in {3, 10, 30}, 4 restarts, 100 steps")
  return p.parse_args(argv)


def run(args) -> list[dict]:
  ns = [3, 10, 30] if args.quick else common.int_list(args.ns)
  restarts = 4 if args.quick else args.restarts
  steps = 100 if args.quick else args.steps
  params = maps.unit_l2_params()
  f = functools.partial(maps.l2_mha, params)
  first_row = functools.partial(maps.l2_mha_first_row, params)
  rows = []
  for n in ns:
    start = time.time()
    result = jacobian.search_lower_bound(
        f, num_tokens=n, dim=1, rng=jax.random.PRNGKey(args.seed + n),
        norm=args.norm, num_restarts=restarts, num_steps=steps,
        learning_rate=args.lr,
        objective="first_token" if args.norm == "inf" else "auto",
        first_row_fn=first_row)
    upper = float(bounds.l2_mha_bound_from_variables(
        params, num_tokens=n, norm=args.norm))
    rows.append({"n": n, "norm": args.norm,
                 "lower_bound": round(result.value, 4),
                 "upper_bound": round(upper, 4),
                 "ratio": round(result.value / upper, 4),
                 "restarts": restarts, "steps": steps,
                 "seconds": round(time.time() - start, 1)})
    print(rows[-1], flush=True)
  return rows


def plot(rows, path):
  fig, ax = common.plt.subplots(figsize=(5, 3.5))
  ns = [r["n"] for r in rows]
  ax.plot(ns, [r["upper_bound"] for r in rows], "o-",
          label="upper bound (Thm 3.2)")
  ax.plot(ns, [r["lower_bound"] for r in rows], "s-",
          label="lower bound (optimized ||J||)")
  ax.set_xscale("log")
  ax.set_xlabel("N (tokens)")
  ax.set_ylabel(f"Lipschitz constant ({rows[0]['norm']}-norm)")
  ax.set_title("L2-MHA, D = H = 1, unit weights")
  ax.legend()
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  common.write_csv(os.path.join(args.out, f"lower_bound_{args.norm}.csv"),
                   rows)
  plot(rows, os.path.join(args.out, f"lower_bound_{args.norm}.png"))


if __name__ == "__main__":
  main()
