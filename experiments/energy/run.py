"""Does the energy decrease across unfolded attention layers?

Yang, Huang and Wipf (2022): the forward pass of a constrained attention
layer is a descent step on an energy (`layers.py`). On a batch of random
inputs and on a model trained here, this script unfolds 24 (--layers)
layers and records E after each:

  exact:          the constrained layer (tied W_Q = W_K = W, key bias, value
                  map W^T W, step alpha = 1 < 2): E must not increase;
  wrong_step:     the same layer with alpha = 3 (outside (0, 2));
  unconstrained:  standard residual attention, W_Q = W, W_K and W_V drawn
                  independently (energy measured with W);
  favor_m<m>:     exact, with the attention average estimated by FAVOR+
                  (m positive orthogonal features of the Gaussian kernel,
                  a fresh draw per layer, as a Performer redraws them).

"Trained": W (and, for unconstrained, W_Q, W_K, W_V) learned by Adam so that
6 unfolded layers map noisy tokens to their cluster centres (Gaussian
blurring mean shift is this descent), then unfolded to 24 layers.
energy.csv: variant, inputs (random | trained), layer, mean energy over the
batch, how many inputs' energy rose at that layer and the largest rise
relative to |E|.

  python -m experiments.energy --out results/energy
  python -m experiments.energy --quick
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments.energy import layers
from performer_jax.attention import gaussian_orthogonal_random_matrix

WRONG_STEP = 3.0  # Outside (0, 2), where descent is guaranteed.


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results")
  p.add_argument("--layers", type=int, default=24)
  p.add_argument("--tokens", type=int, default=32)
  p.add_argument("--dim", type=int, default=8)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lam", type=float, default=32.0,
                 help="weight of |Y - X|^2: large enough that the exact "
                 "layers settle within the 24 layers")
  p.add_argument("--w-scale", type=float, default=0.5,
                 help="spectral scale of the random W (FAVOR+'s variance "
                 "grows like exp(|W y|^2))")
  p.add_argument("--features", default="8,32,128,512,2048")
  p.add_argument("--train-steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="batch 8, m up to 512, 100 training steps")
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.features, args.train_steps = 8, "8,32,128,512", 100
  return args


def cluster_batch(rng, batch, tokens, dim, centres=4, noise=0.3):
  """(noisy tokens, their cluster centres), both `[B, L, D]`."""
  k1, k2, k3 = jax.random.split(rng, 3)
  c = 1.5 * jax.random.normal(k1, (batch, centres, dim))
  assign = jax.random.randint(k2, (batch, tokens), 0, centres)
  clean = jnp.take_along_axis(c, assign[..., None], axis=1)
  return clean + noise * jax.random.normal(k3, clean.shape), clean


def _exact_stack(params, x, lam, depth):
  y = x
  for _ in range(depth):
    y = layers.exact_layer(y, x, params["w"], lam, 1.0)
  return y


def _unconstrained_stack(params, x, depth):
  y = x
  for _ in range(depth):
    y = layers.unconstrained_layer(y, params["w"], params["w_k"],
                                   params["w_v"], 1.0 / 3)
  return y


def train(args, kind, params):
  """Adam on the denoising loss of a 6-layer stack; returns params."""
  stack = (functools.partial(_exact_stack, lam=args.lam, depth=6)
           if kind == "exact" else
           functools.partial(_unconstrained_stack, depth=6))
  opt = optax.adam(1e-2)

  @jax.jit
  def step(params, state, rng):
    x, clean = cluster_batch(rng, 16, args.tokens, args.dim)
    loss, g = jax.value_and_grad(lambda p: jnp.mean(
        (jax.vmap(lambda xi: stack(p, xi))(x) - clean) ** 2))(params)
    updates, state = opt.update(g, state)
    return optax.apply_updates(params, updates), state, loss

  state = opt.init(params)
  for i, rng in enumerate(jax.random.split(jax.random.PRNGKey(args.seed + 7),
                                           args.train_steps)):
    params, state, loss = step(params, state, rng)
  print(f"trained {kind}: final denoising MSE {float(loss):.4f}", flush=True)
  return params


def curves(args, params, x_BLD) -> dict[str, np.ndarray]:
  """variant -> energies `[B, layers + 1]`."""
  lam, n = args.lam, args.layers
  w = params["w"]

  def run(layer, per_layer=None):
    return np.asarray(jax.jit(jax.vmap(lambda x: layers.unroll(
        lambda y, p: layer(y, x, p), x, x, w, lam, n, per_layer)))(x_BLD))

  out = {
      "exact": run(lambda y, x, _: layers.exact_layer(y, x, w, lam, 1.0)),
      "wrong_step": run(lambda y, x, _: layers.exact_layer(y, x, w, lam,
                                                            WRONG_STEP)),
      "unconstrained": run(lambda y, x, _: layers.unconstrained_layer(
          y, w, params["w_k"], params["w_v"], 1.0 / 3)),
  }
  for m in common.int_list(args.features):
    keys = jax.random.split(jax.random.PRNGKey(args.seed + m), n)
    projs = jnp.stack([gaussian_orthogonal_random_matrix(k, m, w.shape[0])
                       for k in keys])
    out[f"favor_m{m}"] = run(lambda y, x, p: layers.exact_layer(
        y, x, w, lam, 1.0, p), projs)
  return out


RESOLUTION = 1e-5  # Relative; E sums L^2 float32 terms.


def violation(e_BT: np.ndarray, reference_BT: np.ndarray) -> float:
  """Total energy increase across layers over the exact layers' total
  decrease, averaged over inputs (rises under RESOLUTION |E| ignored)."""
  d = np.diff(e_BT, axis=1)
  rises = np.where(d > RESOLUTION * np.abs(e_BT[:, :-1]), d, 0).sum(1)
  drop = reference_BT[:, 0] - reference_BT[:, -1]
  return float(np.mean(rises / np.maximum(drop, 1e-12)))


def run(args) -> tuple[list[dict], dict]:
  rng = jax.random.PRNGKey(args.seed)
  k1, k2, k3, k4 = jax.random.split(rng, 4)
  dim = args.dim
  init = {name: args.w_scale * jax.random.normal(k, (dim, dim)) /
          np.sqrt(dim)
          for name, k in zip(("w", "w_k", "w_v"), (k1, k2, k3))}
  x_random = jax.random.normal(k4, (args.batch, args.tokens, dim))
  x_trained, _ = cluster_batch(jax.random.PRNGKey(args.seed + 1),
                               args.batch, args.tokens, dim)
  exact_params = train(args, "exact", {"w": init["w"]})
  free_params = train(args, "unconstrained", init)
  trained = {**curves(args, {**init, "w": exact_params["w"]}, x_trained),
             "unconstrained": curves(args, free_params, x_trained)[
                 "unconstrained"]}
  results = {"random": curves(args, init, x_random), "trained": trained}
  rows, stats = [], {}
  for inputs, by_variant in results.items():
    for variant, e_BT in by_variant.items():
      # Rises below float32 resolution of the sum are not increases.
      rel = np.diff(e_BT, axis=1) / np.abs(e_BT[:, :-1])
      rel = np.where(rel > RESOLUTION, rel, 0.0)
      rises = rel * np.abs(e_BT[:, :-1])
      for layer in range(e_BT.shape[1]):
        rows.append({
            "variant": variant, "inputs": inputs, "layer": layer,
            "energy": round(float(e_BT[:, layer].mean()), 5),
            "increases": 0 if layer == 0 else int(
                (rises[:, layer - 1] > 0).sum()),
            "max_rel_increase": 0.0 if layer == 0 else float(
                max(rel[:, layer - 1].max(), 0.0))})
      stats[inputs, variant] = {
          "steps_up": float((rises > 0).mean()),
          "max_rel_increase": float(max(rel.max(), 0.0)),
          "violation": violation(e_BT, by_variant["exact"])}
  for key, value in stats.items():
    print(key, {k: round(v, 6) for k, v in value.items()}, flush=True)
  return rows, stats


def favor_slope(stats, inputs="random"):
  """Least-squares slope of log violation against log m (None if < 2)."""
  pts = [(int(v[7:]), s["violation"]) for (i, v), s in stats.items()
         if i == inputs and v.startswith("favor_m") and s["violation"] > 0]
  if len(pts) < 2:
    return None
  return float(np.polyfit(np.log(np.array(pts)[:, 0]),
                          np.log(np.array(pts)[:, 1]), 1)[0])


def plot(rows, stats, path):
  fig, axes = common.plt.subplots(1, 3, figsize=(13, 3.8))
  for ax, inputs in zip(axes[:2], ("random", "trained")):
    for i, variant in enumerate(dict.fromkeys(
        r["variant"] for r in rows if r["inputs"] == inputs)):
      sub = [r for r in rows if r["inputs"] == inputs and
             r["variant"] == variant]
      if variant.startswith("favor_m") and variant not in (
          "favor_m8", "favor_m512"):
        continue
      ax.plot([r["layer"] for r in sub], [r["energy"] for r in sub],
              "-" if variant == "exact" else "--", color=f"C{i}",
              label=variant)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean energy E(Y)")
    ax.set_title(f"{inputs} inputs")
    ax.legend(fontsize=7)
  bx = axes[2]
  for inputs, marker in (("random", "o-"), ("trained", "s--")):
    pts = sorted((int(v[7:]), s["violation"]) for (i, v), s in stats.items()
                 if i == inputs and v.startswith("favor_m"))
    bx.plot([p[0] for p in pts], [max(p[1], 1e-9) for p in pts], marker,
            label=f"{inputs} (slope {favor_slope(stats, inputs) or 0:.2f})")
  bx.set_xscale("log", base=2)
  bx.set_yscale("log")
  bx.set_xlabel("FAVOR+ features m")
  bx.set_ylabel("energy increases / exact decrease")
  bx.set_title("FAVOR+ departs from descent")
  bx.legend(fontsize=7)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows, stats = run(args)
  common.write_csv(os.path.join(args.out, "energy.csv"), rows)
  plot(rows, stats, os.path.join(args.out, "energy.png"))
  for inputs in ("random", "trained"):
    print(f"FAVOR+ violation ~ m^{favor_slope(stats, inputs) or 0:.2f} "
          f"({inputs} inputs)")
  return rows, stats


if __name__ == "__main__":
  main()
