"""Training samples needed to learn an s-sparse function of T bits.

Edelman, Goel, Kakade and Zhang (2021): a bounded-norm self-attention layer
"creates a sparse variable": the sample complexity of an s-sparse function
of a length-T input grows only like log T. For each attention (softmax,
FAVOR+, L2), each T and each s, this script finds the smallest number of
training samples N (doubling from 32, then bisection to a factor 1.25) at
which the `task.Classifier` reaches 95% test accuracy, averaged over
--seeds training runs, and records the attention weights' norms of the
first run at that N. variable_creation.csv: attention, T, s, samples
(--max-samples + 1 when never reached), accuracy, norm_qk, norm_vo.

  python -m experiments.variable_creation --out results/variable_creation
  python -m experiments.variable_creation --quick
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from experiments import common
from experiments.variable_creation import task

ATTENTIONS = ("softmax", "favor", "l2")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results")
  p.add_argument("--lengths", default="8,16,32,64,128,256")
  p.add_argument("--sparsity", default="2,3")
  p.add_argument("--attentions", default=",".join(ATTENTIONS))
  p.add_argument("--target", type=float, default=0.95)
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--num-features", type=int, default=64)
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--max-samples", type=int, default=4096)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="T = 8, 32, 64; s = 3; one seed; 250 steps")
  args = p.parse_args(argv)
  if args.quick:
    args.lengths, args.sparsity, args.seeds, args.steps = (
        "8,32,64", "3", 1, 250)
  for a in args.attentions.split(","):
    if a not in ATTENTIONS:
      p.error(f"--attentions: unknown {a!r}; choose from {ATTENTIONS}.")
  return args


def run(args) -> list[dict]:
  rows = []
  for s in common.int_list(args.sparsity):
    for attention in args.attentions.split(","):
      start = 32
      for length in common.int_list(args.lengths):
        subset = task.hidden_subset(length, s, args.seed)
        model = task.Classifier(length=length, width=args.width,
                                attention=attention,
                                num_features=args.num_features)
        runs = {}

        def ok(n):
          accs = []
          for seed in range(args.seeds):
            acc, variables = task.train_and_test(
                model, subset, n, args.seed + 100 * seed + 1,
                steps=args.steps, capacity=args.max_samples)
            accs.append(acc)
            runs.setdefault(n, variables)
          runs[n, "acc"] = float(np.mean(accs))
          return runs[n, "acc"] >= args.target

        t0 = time.time()
        n = common.smallest(ok, 8, args.max_samples, start=start)
        found = n <= args.max_samples
        if found:
          start = n
        qk, vo = (task.attention_norms(runs[n]) if found
                  else (float("nan"),) * 2)
        rows.append({"attention": attention, "T": length, "s": s,
                     "samples": n,
                     "accuracy": round(runs.get((n, "acc"), float("nan")),
                                       4),
                     "norm_qk": round(qk, 3), "norm_vo": round(vo, 3),
                     "subset": " ".join(map(str, subset)),
                     "seconds": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)
  return rows


def fit_log(rows, attention, s, max_samples):
  """(samples added per doubling of T, samples ~ T^alpha exponent)."""
  pts = [(r["T"], r["samples"]) for r in rows if r["attention"] == attention
         and r["s"] == s and r["samples"] <= max_samples]
  if len(pts) < 3:
    return None
  x = np.log2([p[0] for p in pts])
  y = np.array([p[1] for p in pts], float)
  return float(np.polyfit(x, y, 1)[0]), float(np.polyfit(x, np.log2(y),
                                                         1)[0])


def plot(rows, path, max_samples):
  fig, (ax, bx) = common.plt.subplots(1, 2, figsize=(10, 3.8))
  for i, attention in enumerate(dict.fromkeys(r["attention"] for r in rows)):
    for s in sorted({r["s"] for r in rows}):
      sub = [r for r in rows if r["attention"] == attention and r["s"] == s
             and r["samples"] <= max_samples]
      if not sub:
        continue
      fit = fit_log(rows, attention, s, max_samples)
      label = f"{attention}, s={s}" + (
          f" (+{fit[0]:.0f}/doubling, T^{fit[1]:.2f})" if fit else "")
      style = "o-" if s == 3 else "s--"
      ax.plot([r["T"] for r in sub], [r["samples"] for r in sub], style,
              color=f"C{i}", label=label)
      bx.plot([r["T"] for r in sub], [r["norm_qk"] for r in sub], style,
              color=f"C{i}", label=f"{attention}, s={s}")
  for a in (ax, bx):
    a.set_xscale("log", base=2)
    a.set_xlabel("input length T")
    a.legend(fontsize=7)
  ax.set_ylabel("training samples for 95% test accuracy")
  ax.set_title("Sample complexity of an s-sparse majority")
  bx.set_ylabel("sum_h |W_Q^h W_K^h^T|_F at that N")
  bx.set_title("Learned attention norms")
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  common.write_csv(os.path.join(args.out, "variable_creation.csv"), rows)
  plot(rows, os.path.join(args.out, "variable_creation.png"),
       args.max_samples)
  for attention in args.attentions.split(","):
    for s in common.int_list(args.sparsity):
      fit = fit_log(rows, attention, s, args.max_samples)
      if fit:
        print(f"{attention} s={s}: +{fit[0]:.1f} samples per doubling of T,"
              f" samples ~ T^{fit[1]:.2f}")
  return rows


if __name__ == "__main__":
  main()
