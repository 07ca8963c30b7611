"""Experiment 3: inverting y = x + g(x) by fixed-point iteration, vs c.

For each contraction factor c, invert y = x + g(x) with x <- y - g(x) and
record the iterations needed (to max|x_{k+1} - x_k| <= atol + rtol max|y|)
and the reconstruction error max|x_rec - x|, for

  attention_worst: g = contractive L2 attention with D = H = 1 and unit
      weights (g = c f / bound), N = --n, at the input that maximizes
      ||J_f||_inf (found by the lower-bound search): the local contraction is
      about c * (lower bound / upper bound), the hardest case we know of;
  linear: g(x) = -c x, where the contraction is exactly c everywhere (the
      a-priori count is attained), for reference;
  mlp: g = ContractiveMlp(width --width, hidden 4 width) at random init, on
      Gaussian inputs [batch, N, width];
  model: the hidden stack of `make_invertible_model` (--layers layers of
      contractive L2 attention + MLP, width --width) at random init, on the
      embeddings of random bytes, inverted block by block; iterations are
      summed over the blocks.

`bound_iters` is the a-priori count that guarantees the stopping rule for a
map whose contraction is exactly c: the smallest k with c^k max|y - g(y) - y|
<= tol, i.e. the worst case over all g with Lip(g) = c.

  python -m experiments.lipschitz.invertible --out results/lipschitz
  python -m experiments.lipschitz.invertible --quick
"""

from __future__ import annotations

import argparse
import functools
import math
import os

import jax
import jax.numpy as jnp

from experiments import common
from performer_jax import linen as pnn
from performer_jax.lipschitz import bounds
from performer_jax.lipschitz import contractive
from performer_jax.lipschitz import invertible
from performer_jax.lipschitz import jacobian
from performer_jax.lipschitz import maps
from performer_jax.lipschitz import model as model_lib


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/lipschitz")
  p.add_argument("--cs", default="0.5,0.7,0.9,0.95,0.99,0.999")
  p.add_argument("--n", type=int, default=10, help="tokens N")
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--max-iters", type=int, default=20000)
  p.add_argument("--atol", type=float, default=1e-6)
  p.add_argument("--rtol", type=float, default=1e-6)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="c in {0.5, 0.9, 0.99}, width 16, 2 layers")
  return p.parse_args(argv)


def _bound_iters(c, step0, tol):
  if step0 <= tol:
    return 0
  return math.ceil(math.log(tol / step0) / math.log(c)) + 1


def _invert(g, y, x, args, c):
  x_rec, info = invertible.fixed_point_inverse(
      g, y, max_iters=args.max_iters, atol=args.atol, rtol=args.rtol)
  tol = float(info.tolerance)
  return {
      "iters": int(info.num_iters), "converged": bool(info.converged),
      "residual": float(info.residual),
      "recon_error": float(jnp.max(jnp.abs(x_rec - x))),
      "bound_iters": _bound_iters(c, float(jnp.max(jnp.abs(g(y)))), tol),
  }


def attention_worst(args, c, x_worst):
  params = maps.unit_l2_params()
  upper = bounds.l2_mha_bound_from_variables(params, num_tokens=args.n)
  g = lambda x: c * maps.l2_mha(params, x) / upper
  x = jnp.asarray(x_worst)
  return _invert(g, x + g(x), x, args, c)


def linear(args, c):
  x = jax.random.normal(jax.random.PRNGKey(args.seed),
                        (args.batch, args.n, args.width))
  g = lambda x: -c * x
  return _invert(g, x + g(x), x, args, c)


def mlp(args, c):
  module = contractive.ContractiveMlp(hidden_dim=4 * args.width, c=c)
  k_x, k_p = jax.random.split(jax.random.PRNGKey(args.seed))
  x = jax.random.normal(k_x, (args.batch, args.n, args.width))
  variables = module.init(k_p, x)
  g = functools.partial(module.apply, variables)
  return _invert(g, x + g(x), x, args, c)


def model(args, c):
  cfg = pnn.ModelConfig.defaults()
  cfg.attention.kind = "l2"
  cfg.num_layers = args.layers
  cfg.emb_dim = args.width
  cfg.mlp_dim = 4 * args.width
  cfg.num_heads = max(1, args.width // 16)
  cfg.max_len = args.n
  lm = model_lib.make_invertible_model(cfg, vocab_size=256, causal=True, c=c)
  k_x, k_p = jax.random.split(jax.random.PRNGKey(args.seed))
  tokens = jax.random.randint(k_x, (args.batch, args.n), 0, 256)
  variables = lm.init({"params": k_p}, tokens)
  x = lm.apply(variables, tokens,
               method=model_lib.InvertibleL2Transformer.embed)
  h = lm.apply(variables, x, method=model_lib.InvertibleL2Transformer.hidden)
  x_rec, infos = model_lib.invert_hidden(
      lm, variables, h, max_iters=args.max_iters, atol=args.atol,
      rtol=args.rtol)
  return {
      "iters": sum(int(i.num_iters) for i in infos),
      "converged": all(bool(i.converged) for i in infos),
      "residual": max(float(i.residual) for i in infos),
      "recon_error": float(jnp.max(jnp.abs(x_rec - x))),
      "bound_iters": "",
  }


def run(args) -> list[dict]:
  if args.quick:
    args.width, args.layers = 16, 2
  cs = [0.5, 0.9, 0.99] if args.quick else common.float_list(args.cs)
  params = maps.unit_l2_params()
  worst = jacobian.search_lower_bound(
      functools.partial(maps.l2_mha, params), num_tokens=args.n, dim=1,
      rng=jax.random.PRNGKey(args.seed), num_restarts=8, num_steps=300,
      objective="first_token",
      first_row_fn=functools.partial(maps.l2_mha_first_row, params))
  upper = float(bounds.l2_mha_bound_from_variables(params,
                                                   num_tokens=args.n))
  print(f"worst input for N={args.n}: ||J||_inf = {worst.value:.4f}, "
        f"bound {upper:.4f}", flush=True)
  rows = []
  for c in cs:
    cases = {"linear": linear(args, c),
             "attention_worst": attention_worst(args, c, worst.x),
             "mlp": mlp(args, c), "model": model(args, c)}
    for name, res in cases.items():
      rows.append({"case": name, "c": c, **res})
      print(rows[-1], flush=True)
  return rows


def plot(rows, path):
  fig, (ax1, ax2) = common.plt.subplots(1, 2, figsize=(9, 3.5))
  for case in ("linear", "attention_worst", "mlp", "model"):
    sub = [r for r in rows if r["case"] == case]
    one_minus_c = [1 - r["c"] for r in sub]
    ax1.plot(one_minus_c, [r["iters"] for r in sub], "o-", label=case)
    ax2.plot(one_minus_c, [max(r["recon_error"], 1e-10) for r in sub], "o-",
             label=case)
  sub = [r for r in rows if r["case"] == "attention_worst"]
  ax1.plot([1 - r["c"] for r in sub], [r["bound_iters"] for r in sub], "k:",
           label="a-priori bound (Lip = c)")
  for ax in (ax1, ax2):
    ax.set_xscale("log")
    ax.set_xlabel("1 - c")
    ax.legend(fontsize=7)
  ax1.set_yscale("log")
  ax1.set_ylabel("fixed-point iterations")
  ax2.set_yscale("log")
  ax2.set_ylabel("max |x_rec - x|")
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  common.write_csv(os.path.join(args.out, "invertible.csv"), rows)
  plot(rows, os.path.join(args.out, "invertible.png"))


if __name__ == "__main__":
  main()
