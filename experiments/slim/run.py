"""SLiM: memory and time of a causal Performer training step vs chunk size.

A tiny causal language model (token embedding, `--layers` blocks of causal
FAVOR+ attention and a GELU MLP with pre-RMS-norm residuals, tied output
embedding) is trained for one SGD step on random tokens. The attention is
either the chunked causal `favor_attention` differentiated by autodiff
("autodiff") or `slim_favor_attention` ("slim", backward recomputes inside
chunks). For each length and chunk size C we record the compiled step's peak
memory (XLA memory analysis: temp + arguments + outputs) and the median step
time, and check that both implementations give the same loss and gradients.

Only the attention is made sub-linear here; the model's other activations
(embeddings, MLP, norms: O(L D) per layer) are still stored by autodiff, so
the memory floor is theirs. Default sizes (L = 16k and 64k, width 128, 4 heads
of 32, 256 features) take a few minutes on 2 CPU cores.

  python -m experiments.slim.run --out results/slim
  python -m experiments.slim.run --quick
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.scaling import timing
from performer_jax import attention
from performer_jax.attention import slim_favor_attention

IMPLEMENTATIONS = {
    "autodiff": lambda q, k, v, p, kernel, c: attention.favor_attention(
        q, k, v, p, kernel=kernel, causal=True, chunk_size=c,
        implementation="autodiff"),
    "slim": lambda q, k, v, p, kernel, c: slim_favor_attention(
        q, k, v, p, kernel=kernel, causal=True, chunk_size=c),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/slim")
  p.add_argument("--lengths", default="16384,65536")
  p.add_argument("--chunk-sizes", default="64,256,1024,2048")
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--features", type=int, default=256)
  p.add_argument("--kernel", default="softmax",
                 choices=sorted(attention.KERNELS))
  p.add_argument("--vocab", type=int, default=32)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--max-seconds", type=float, default=10.0,
                 help="stop repeating a configuration after this long")
  p.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
  args = p.parse_args(argv)
  if args.quick:
    args.lengths, args.chunk_sizes = "512", "32,128"
    args.width, args.features, args.repeats = 32, 32, 1
  args.lengths = [int(x) for x in args.lengths.split(",") if x]
  args.chunk_sizes = [int(x) for x in args.chunk_sizes.split(",") if x]
  if args.width % args.heads:
    p.error(f"--width {args.width} must be divisible by --heads "
            f"{args.heads}")
  return args


def init_params(rng, args) -> dict:
  d, h = args.width, args.heads
  dh = d // h
  keys = iter(jax.random.split(rng, 2 + 6 * args.layers))
  normal = lambda shape, fan_in: jax.random.normal(
      next(keys), shape) / math.sqrt(fan_in)
  layers = [{"wq": normal((d, h, dh), d), "wk": normal((d, h, dh), d),
             "wv": normal((d, h, dh), d), "wo": normal((h, dh, d), d),
             "w1": normal((d, 4 * d), d), "w2": normal((4 * d, d), 4 * d)}
            for _ in range(args.layers)]
  return {"embed": normal((args.vocab, d), 1.0), "layers": layers,
          "projection": attention.gaussian_orthogonal_random_matrix(
              next(keys), args.features, dh)}


def _rms_norm(x):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def loss_fn(params, tokens_BL, attend):
  """Next-token cross-entropy; `attend(q, k, v, projection)` is causal."""
  x = params["embed"][tokens_BL]
  proj = jax.lax.stop_gradient(params["projection"])
  for layer in params["layers"]:
    h = _rms_norm(x)
    q, k, v = (jnp.einsum("bld,dhk->blhk", h, layer[w])
               for w in ("wq", "wk", "wv"))
    x = x + jnp.einsum("blhk,hkd->bld", attend(q, k, v, proj), layer["wo"])
    x = x + jax.nn.gelu(_rms_norm(x) @ layer["w1"]) @ layer["w2"]
  # Tied output embedding, scaled so initial logits are O(1).
  logits = _rms_norm(x) @ params["embed"].T / math.sqrt(x.shape[-1])
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nll = -jnp.take_along_axis(logp, tokens_BL[:, 1:, None], axis=-1)
  return jnp.mean(nll)


def make_step(impl: str, kernel: str, chunk: int, lr: float = 0.1):
  attend = lambda q, k, v, p: IMPLEMENTATIONS[impl](q, k, v, p, kernel, chunk)

  def step(params, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, attend)
    grads["projection"] = jnp.zeros_like(grads["projection"])
    new = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
    return new, loss, grads
  return jax.jit(step)


def attention_temp_bytes(impl: str, args, length: int, chunk: int) -> float:
  """Compiled temp bytes of one attention layer's fwd+bwd alone (no model):
  the part of the step that SLiM changes."""
  dh = args.width // args.heads
  x = jax.ShapeDtypeStruct((args.batch, length, args.heads, dh), jnp.float32)
  proj = jax.ShapeDtypeStruct((args.features, dh), jnp.float32)
  fn = IMPLEMENTATIONS[impl]
  grad = jax.jit(jax.grad(
      lambda q, k, v, p: jnp.sum(fn(q, k, v, p, args.kernel, chunk)),
      argnums=(0, 1, 2)))
  return timing.compiled_bytes(grad.lower(x, x, x, proj).compile())["temp"]


def run(args) -> list[dict]:
  params = init_params(jax.random.PRNGKey(0), args)
  budget = timing.default_budget_bytes()
  rows = []
  for length in args.lengths:
    tokens = jax.random.randint(jax.random.PRNGKey(1), (args.batch, length),
                                0, args.vocab)
    for chunk in args.chunk_sizes:
      results = {}
      for impl in IMPLEMENTATIONS:
        compiled = make_step(impl, args.kernel, chunk).lower(
            params, tokens).compile()
        mem = timing.compiled_bytes(compiled)
        row = {"impl": impl, "length": length, "chunk_size": chunk,
               "peak_bytes": mem["total"], "temp_bytes": mem["temp"],
               "attn_temp_bytes": attention_temp_bytes(impl, args, length,
                                                       chunk),
               "seconds": math.nan, "loss": math.nan,
               "max_grad_rel_diff": math.nan, "status": "ok"}
        if mem["total"] > budget:
          row["status"] = (f"skipped: needs {mem['total'] / timing.GIB:.1f} "
                           "GiB > budget")
        else:
          out = compiled(params, tokens)
          results[impl] = out
          row["loss"] = float(out[1])
          row["seconds"], _ = timing.median_time(
              lambda: compiled(params, tokens), args.repeats, warmup=0,
              max_seconds=args.max_seconds)
        rows.append(row)
      if len(results) == 2:
        ga = jax.tree_util.tree_leaves(results["autodiff"][2])
        gs = jax.tree_util.tree_leaves(results["slim"][2])
        rel = max(float(jnp.max(jnp.abs(a - b)) /
                        (jnp.max(jnp.abs(a)) + 1e-30)) for a, b in zip(ga, gs))
        rows[-1]["max_grad_rel_diff"] = rows[-2]["max_grad_rel_diff"] = rel
      for row in rows[-2:]:
        print(f"  {row['impl']:8s} L={length:6d} C={chunk:5d} "
              f"{row['peak_bytes'] / 2 ** 20:9.1f} MiB "
              f"(temp {row['temp_bytes'] / 2 ** 20:9.1f}, attention "
              f"{row['attn_temp_bytes'] / 2 ** 20:8.1f}) "
              f"{row['seconds']:8.3f}s loss {row['loss']:.5f} "
              f"grad diff {row['max_grad_rel_diff']:.1e} {row['status']}",
              flush=True)
  return rows


def plot(path, rows, args):
  fig, axes = common.plt.subplots(1, 3, figsize=(16, 4.5))
  for li, length in enumerate(args.lengths):
    for impl, ls in (("autodiff", "--"), ("slim", "-")):
      sel = sorted((r for r in rows if r["impl"] == impl and
                    r["length"] == length), key=lambda r: r["chunk_size"])
      cs = [r["chunk_size"] for r in sel]
      axes[0].plot(cs, [r["temp_bytes"] / 2 ** 20 for r in sel], ls=ls,
                   marker="o", color=f"C{li}", label=f"{impl}, L={length}")
      axes[1].plot(cs, [r["attn_temp_bytes"] / 2 ** 20 for r in sel], ls=ls,
                   marker="o", color=f"C{li}", label=f"{impl}, L={length}")
      axes[2].plot(cs, [r["seconds"] for r in sel], ls=ls, marker="o",
                   color=f"C{li}", label=f"{impl}, L={length}")
  axes[0].set(xscale="log", yscale="log", xlabel="chunk size C",
              ylabel="step temp memory (MiB)",
              title=f"training step, {args.layers} layer(s), width "
              f"{args.width}, m={args.features}")
  axes[1].set(xscale="log", yscale="log", xlabel="chunk size C",
              ylabel="temp memory (MiB)",
              title="one attention layer fwd+bwd alone")
  axes[2].set(xscale="log", yscale="log", xlabel="chunk size C",
              ylabel="step time (s)", title="time per training step")
  for ax in axes:
    ax.legend(fontsize=7)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  rows = run(args)
  path = os.path.join(args.out, "slim.csv")
  common.write_csv(path, rows)
  plot(os.path.join(args.out, "slim.png"), rows, args)
  for length in args.lengths:
    for impl in IMPLEMENTATIONS:
      sel = [r for r in rows if r["impl"] == impl and r["length"] == length]
      best = min(sel, key=lambda r: r["temp_bytes"])
      print(f"{impl:8s} L={length}: step temp MiB by C " + ", ".join(
          f"{r['chunk_size']}:{r['temp_bytes'] / 2 ** 20:.0f}" for r in sel) +
            "; attention-only temp MiB " + ", ".join(
                f"{r['chunk_size']}:{r['attn_temp_bytes'] / 2 ** 20:.0f}"
                for r in sel) +
            f"; min at C={best['chunk_size']}; s by C " + ", ".join(
                f"{r['chunk_size']}:{r['seconds']:.2f}" for r in sel))
  diffs = [r["max_grad_rel_diff"] for r in rows
           if not np.isnan(r["max_grad_rel_diff"])]
  if diffs:
    print(f"max relative gradient difference slim vs autodiff: "
          f"{max(diffs):.2e}")
  print(f"{time.time() - t0:.0f}s; wrote {path}, slim.png")
  return rows


if __name__ == "__main__":
  main()
