"""Does the energy decrease across unfolded constrained Transformer layers?

Yang, Huang and Wipf (2022): the attention and FFN steps of a constrained
Transformer layer are descent steps on an energy (`layers.py`: the authors'
energy and layer, what is guaranteed and under which conditions). On random
inputs and on a model trained here, this script unfolds 24 (--layers)
shared layers and records, after each layer, the energy E = E_att + E_ffn
and whether the attention step raised E_att and the FFN step raised E_ffn:

  exact:          the paper's constrained layer (tied S = W W^T, identity
                  values, symmetric W_f with eigenvalues in [-0.95, 0.95],
                  step sizes 1);
  exact_psd:      the same with W_f's eigenvalues clipped to [0, 0.95]
                  (what the authors' normalize_weight produces);
  wrong_step:     the same layer with step sizes 3 (attention) and 2.5 (FFN,
                  outside (0, 2 / 1.95));
  unconstrained:  free W_Q (= W), W_K, W_V and FFN matrix F (energy measured
                  with W and W_f = constrain(-F));
  favor_m<m>:     exact, softmax(Y S Y^T) Y estimated by FAVOR+ (m positive
                  orthogonal features, numerator and normalizer, a fresh
                  draw per layer as a Performer redraws them).

Inputs are synthetic (no download): "random" = Gaussian tokens and
Xavier-initialised weights as in the authors' code; "trained" = weights
learned by Adam (W_f projected back onto the constraint after every step,
as the authors' normalize_weight) on a synthetic sequence classification
task with 12 shared layers and mean-pooled linear readout, then unfolded to
24 layers on held-out sequences. energy.csv: variant, inputs, layer, mean
energy E over the batch, mean E_att and E_ffn, and the number of inputs
whose attention / FFN step / whole layer raised its energy at that layer.

  python -m experiments.energy --out results/energy
  python -m experiments.energy --quick
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments.energy import layers
from performer_jax.attention import gaussian_orthogonal_random_matrix

WRONG_STEP = (3.0, 2.5)  # Attention, FFN: outside the descent ranges.
RESOLUTION = 1e-5  # Relative; energies sum O(L^2) float32 terms.


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results")
  p.add_argument("--layers", type=int, default=24)
  p.add_argument("--train-layers", type=int, default=12)
  p.add_argument("--tokens", type=int, default=32)
  p.add_argument("--dim", type=int, default=16)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--w-scale", type=float, default=1.0,
                 help="multiplies the Xavier-normal W of the random inputs")
  p.add_argument("--features", default="16,64,256,1024,4096")
  p.add_argument("--train-steps", type=int, default=400)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="batch 16, m up to 1024, 150 training steps")
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.features, args.train_steps = 16, "16,64,256,1024", 150
  if args.layers < 1 or args.dim < 1:
    p.error("--layers and --dim must be positive.")
  return args


def init_params(rng, dim, w_scale=1.0):
  """(constrained params w, w_f, b; free params w_q, w_k, w_v, f, b),
  Xavier-normal as in the authors' code."""
  ks = jax.random.split(rng, 6)
  xavier = lambda k, shape: jax.random.normal(k, shape) * np.sqrt(
      2 / sum(shape))
  w = w_scale * xavier(ks[0], (dim, dim))
  f = xavier(ks[1], (dim, dim))
  b = xavier(ks[2], (1, dim))[0]
  exact = {"w": w, "w_f": layers.constrain_ffn(-f), "b": b}
  free = {"w_q": w, "w_k": w_scale * xavier(ks[3], (dim, dim)),
          "w_v": xavier(ks[4], (dim, dim)), "f": f, "b": b}
  return exact, free


def energy_params(free):
  return {"w": free["w_q"], "w_f": layers.constrain_ffn(-free["f"]),
          "b": free["b"]}


def task_batch(rng, batch, tokens, dim):
  """Sequences whose class (0/1) is the sign of a hidden direction carried
  by a quarter of the tokens: (tokens `[B, L, D]`, labels `[B]`)."""
  k1, k2, k3 = jax.random.split(rng, 3)
  y = jax.random.bernoulli(k1, 0.5, (batch,)).astype(jnp.int32)
  direction = jnp.zeros(dim).at[0].set(1.0)
  carry = jax.random.bernoulli(k2, 0.25, (batch, tokens, 1))
  x = jax.random.normal(k3, (batch, tokens, dim))
  return x + carry * (2.0 * y[:, None, None] - 1) * 2.0 * direction, y


def train(args, kind, params):
  """Adam on cross-entropy of `args.train_layers` shared layers; returns
  the layer params (the readout is dropped)."""
  def layer(p, y):
    if kind == "exact":
      return layers.exact_layer(y, p)[1]
    return layers.unconstrained_layer(y, p)[1]

  def logits(p, x):
    y = x
    for _ in range(args.train_layers):
      y = layer(p, y)
    return jnp.mean(y, 0) @ p["readout"]

  params = {**params, "readout": jnp.zeros((args.dim, 2))}
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, state, rng):
    x, y = task_batch(rng, 32, args.tokens, args.dim)
    loss, g = jax.value_and_grad(lambda p: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            jax.vmap(lambda xi: logits(p, xi))(x), y)))(params)
    updates, state = opt.update(g, state)
    params = optax.apply_updates(params, updates)
    if kind == "exact":  # The authors' normalize_weight after each step.
      params["w_f"] = layers.constrain_ffn(params["w_f"])
    return params, state, loss

  state = opt.init(params)
  for rng in jax.random.split(jax.random.PRNGKey(args.seed + 7),
                              args.train_steps):
    params, state, loss = step(params, state, rng)
  x, y = task_batch(jax.random.PRNGKey(args.seed + 99), 256, args.tokens,
                    args.dim)
  acc = float(jnp.mean(jnp.argmax(jax.vmap(lambda xi: logits(params, xi))(x),
                                  -1) == y))
  print(f"trained {kind}: loss {float(loss):.3f}, test accuracy {acc:.3f}",
        flush=True)
  params.pop("readout")
  return params


def curves(args, exact, free, x_BLD) -> dict[str, dict]:
  """variant -> unroll's dict with a leading batch axis (NumPy)."""
  n = args.layers
  psd = {**exact, "w_f": layers.constrain_ffn(exact["w_f"], psd=True)}

  def run(params, layer, per_layer=None):
    out = jax.jit(jax.vmap(lambda x: layers.unroll(
        layer, x, params, n, per_layer)))(x_BLD)
    return {k: np.asarray(v) for k, v in out.items()}

  out = {
      "exact": run(exact, lambda y, _: layers.exact_layer(y, exact)),
      "exact_psd": run(psd, lambda y, _: layers.exact_layer(y, psd)),
      "wrong_step": run(exact, lambda y, _: layers.exact_layer(
          y, exact, WRONG_STEP)),
      "unconstrained": run(energy_params(free),
                           lambda y, _: layers.unconstrained_layer(y, free)),
  }
  for m in common.int_list(args.features):
    keys = jax.random.split(jax.random.PRNGKey(args.seed + m), n)
    projs = jnp.stack([gaussian_orthogonal_random_matrix(k, m, args.dim)
                       for k in keys])
    out[f"favor_m{m}"] = run(exact, lambda y, p: layers.exact_layer(
        y, exact, projection=p), projs)
  return out


def rises(delta_BT, e_before_BT):
  """Bool: increases beyond float32 resolution of the energies."""
  return delta_BT > RESOLUTION * np.maximum(np.abs(e_before_BT), 1.0)


def summarize(c, exact) -> dict:
  """Fractions of attention / FFN steps and of layers that raised their
  energy; the violation: total E_att rise of the attention steps over the
  exact layers' total E_att drop (mean over inputs); the departure: mean
  |E - E_exact| over mean |E_exact| along the layers."""
  att_up = rises(c["att_rise"], c["E_att"][:, :-1])
  ffn_up = rises(c["ffn_rise"], c["E_ffn"][:, :-1])
  layer_up = rises(np.diff(c["E"], axis=1), c["E"][:, :-1])
  drop = np.maximum(-np.minimum(exact["att_rise"], 0).sum(1), 1e-12)
  viol = np.where(att_up, c["att_rise"], 0).sum(1) / drop
  finite = np.isfinite(c["E"]).all()
  departure = (np.mean(np.abs(c["E"] - exact["E"])) /
               np.mean(np.abs(exact["E"]))) if finite else float("inf")
  return {"att_steps_up": float(att_up.mean()),
          "ffn_steps_up": float(ffn_up.mean()),
          "layers_up": float(layer_up.mean()),
          "violation": float(np.mean(viol)) if finite else float("inf"),
          "departure": float(departure)}


def run(args) -> tuple[list[dict], dict]:
  k_init, k_x = jax.random.split(jax.random.PRNGKey(args.seed))
  exact, free = init_params(k_init, args.dim, args.w_scale)
  x_random = jax.random.normal(k_x, (args.batch, args.tokens, args.dim))
  x_task, _ = task_batch(jax.random.PRNGKey(args.seed + 1), args.batch,
                         args.tokens, args.dim)
  exact_t = train(args, "exact", dict(exact))
  free_t = train(args, "unconstrained", dict(free))
  results = {"random": curves(args, exact, free, x_random),
             "trained": curves(args, exact_t, free_t, x_task)}
  rows, stats = [], {}
  for inputs, by_variant in results.items():
    for variant, c in by_variant.items():
      att_up = rises(c["att_rise"], c["E_att"][:, :-1])
      ffn_up = rises(c["ffn_rise"], c["E_ffn"][:, :-1])
      layer_up = rises(np.diff(c["E"], axis=1), c["E"][:, :-1])
      for t in range(c["E"].shape[1]):
        up = lambda a: 0 if t == 0 else int(a[:, t - 1].sum())
        rows.append({"variant": variant, "inputs": inputs, "layer": t,
                     "energy": float(np.mean(c["E"][:, t])),
                     "energy_att": float(np.mean(c["E_att"][:, t])),
                     "energy_ffn": float(np.mean(c["E_ffn"][:, t])),
                     "att_step_rises": up(att_up),
                     "ffn_step_rises": up(ffn_up),
                     "layer_rises": up(layer_up), "batch": len(c["E"])})
      stats[inputs, variant] = summarize(c, by_variant["exact"])
  for key, value in stats.items():
    print(key, {k: float(f"{v:.3g}") for k, v in value.items()}, flush=True)
  return rows, stats


def favor_slope(stats, inputs="random", key="departure"):
  """Least-squares slope of log stats[key] against log m (None if < 2)."""
  pts = [(int(v[7:]), s[key]) for (i, v), s in stats.items()
         if i == inputs and v.startswith("favor_m") and 0 < s[key] < np.inf]
  if len(pts) < 2:
    return None
  return float(np.polyfit(np.log(np.array(pts)[:, 0]),
                          np.log(np.array(pts)[:, 1]), 1)[0])


def plot(rows, stats, path):
  fig, axes = common.plt.subplots(1, 3, figsize=(13, 3.8))
  for ax, inputs in zip(axes[:2], ("random", "trained")):
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    favors = [v for v in variants if v.startswith("favor_m")]
    for i, variant in enumerate(variants):
      if variant.startswith("favor_m") and variant not in (favors[:1] +
                                                           favors[-1:]):
        continue
      sub = [r for r in rows if r["inputs"] == inputs and
             r["variant"] == variant]
      e = np.array([r["energy"] for r in sub])
      if not np.isfinite(e).all() or np.abs(e).max() > 1e6:
        continue  # The wrong step diverges off the axis.
      ax.plot([r["layer"] for r in sub], e,
              "-" if variant == "exact" else "--", color=f"C{i}",
              label=variant)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean energy E_att + E_ffn")
    ax.set_title(f"{inputs} inputs")
    ax.legend(fontsize=7)
  bx = axes[2]
  for inputs, marker in (("random", "o-"), ("trained", "s--")):
    pts = sorted((int(v[7:]), s["departure"], s["att_steps_up"])
                 for (i, v), s in stats.items()
                 if i == inputs and v.startswith("favor_m"))
    slope = favor_slope(stats, inputs)
    bx.plot([p[0] for p in pts], [p[1] for p in pts], marker,
            label=f"{inputs}: |E - E_exact| / |E_exact|"
            + (f" (m^{slope:.2f})" if slope is not None else ""))
    bx.plot([p[0] for p in pts], [max(p[2], 1e-4) for p in pts], marker,
            alpha=0.5, label=f"{inputs}: attention steps raising E_att "
            f"(exact {stats[inputs, 'exact']['att_steps_up']:.3f})")
  bx.set_xscale("log", base=2)
  bx.set_yscale("log")
  bx.set_xlabel("FAVOR+ features m")
  bx.set_title("FAVOR+ in place of softmax")
  bx.legend(fontsize=6)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows, stats = run(args)
  common.write_csv(os.path.join(args.out, "energy.csv"), rows)
  plot(rows, stats, os.path.join(args.out, "energy.png"))
  for inputs in ("random", "trained"):
    slope = favor_slope(stats, inputs)
    if slope is not None:
      print(f"FAVOR+ departure from the exact energies ~ m^{slope:.2f} "
            f"({inputs} inputs)")
  return rows, stats


if __name__ == "__main__":
  main()
