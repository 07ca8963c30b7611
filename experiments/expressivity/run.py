"""Smallest d at which self-attention reaches a sparse pattern, against L.

Likhosherstov, Choromanski and Weller (2021): with the attention parameters
fixed and only the inputs changing, softmax(X W_Q (X W_K)^T / sqrt(d))
approximates any matrix with k non-zeros per row and column at a ratio
precision eps once d = O(log L) (`patterns.py` defines the precision, the
construction and the fit). For each L and k this script finds, by doubling
and bisection (to a factor 1.25), the smallest query/key width d (inputs
are 2d wide) at which

  construction: the paper's random-projection inputs; at each probed d,
                --draws independent draws, and d counts as reached when at
                least half of them are within precision (the construction
                is random, so success is a rate, not a yes/no),
  fitted:       inputs learned by Adam under a norm bound, same W_Q, W_K
                (one fit per probe; --fit-max-length bounds L),

reach precision eps, checks the reported d once more through the library's
`softmax_attention` (identity values give the attention matrix), and then
passes the fitted inputs through `favor_attention` with m random features
(`favor_m<m>` rows: the fraction of rows within precision, and of rows whose
k largest entries are the pattern). expressivity.csv holds one row per
(method, L, k): d, input_width = 2d, success_rate (construction: the
fraction of draws within precision at d); d = max_d + 1 means "not
reached".

  python -m experiments.expressivity --out results/expressivity
  python -m experiments.expressivity --quick
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from experiments import common
from experiments.expressivity import patterns


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results")
  p.add_argument("--lengths", default="64,128,256,512,1024,2048,4096")
  p.add_argument("--ks", default="1,2,4")
  p.add_argument("--eps", type=float, default=0.5)
  p.add_argument("--features", default="1024,4096,16384",
                 help="FAVOR+ feature counts m")
  p.add_argument("--favor-max-length", type=int, default=1024)
  p.add_argument("--max-d", type=int, default=16384)
  p.add_argument("--draws", type=int, default=6,
                 help="construction draws per probed d")
  p.add_argument("--fit-max-length", type=int, default=2048)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true",
                 help="L = 64..512, 4 draws, m = 1024, 4096 up to L = 256")
  args = p.parse_args(argv)
  if args.quick:
    args.lengths, args.features, args.favor_max_length, args.draws = (
        "64,128,256,512", "1024,4096", 256, 4)
  if args.draws < 1:
    p.error(f"--draws must be >= 1, got {args.draws}.")
  if not 0 < args.eps < 1:
    p.error(f"--eps must be in (0, 1), got {args.eps}.")
  return args


def _logits(x1, x2):
  return x1 @ x2.T


def run(args) -> list[dict]:
  rows = []
  eps = args.eps
  for k in common.int_list(args.ks):
    start = {"construction": 16, "fitted": 4}
    for length in common.int_list(args.lengths):
      a = patterns.sparse_pattern(length, k, args.seed)
      inputs, draws = {}, {}

      def draw(d, i):
        """Verdict of construction draw i at d, computed once."""
        got = draws.setdefault(d, {})
        if i not in got:
          x1, x2 = patterns.construction(a, d, eps,
                                         args.seed + 7919 * i + d)
          got[i] = patterns.within(_logits(x1, x2), a, eps)
          if got[i]:
            inputs.setdefault(("construction", d), (x1, x2))
        return got[i]

      def probe(method, d):
        if method == "fitted":
          x1, x2 = patterns.fitted(a, d, eps, args.seed + d)
          inputs[method, d] = (x1, x2)
          return patterns.within(_logits(x1, x2), a, eps)
        wins = 0
        for i in range(args.draws):
          wins += draw(d, i)
          # Stop once the majority verdict is decided.
          if 2 * wins >= args.draws or 2 * (i + 1 - wins) > args.draws:
            break
        return 2 * wins >= args.draws

      for method in ("construction", "fitted"):
        if method == "fitted" and length > args.fit_max_length:
          continue
        t0 = time.time()
        d = common.smallest(lambda d, m=method: probe(m, d), 1,
                              args.max_d, start=start[method])
        checked = ""
        rate = float("nan")
        if d <= args.max_d:
          start[method] = d
          # The same verdict from the library's attention matrix.
          x1, x2 = inputs[method, d]
          m_LL = patterns.attention_matrix(
              *patterns.inputs_and_weights(x1, x2))
          checked = patterns.row_scores(m_LL, a, eps)[0] == 1.0
          if method == "construction":
            rate = float(np.mean([draw(d, i) for i in range(args.draws)]))
        rows.append(_row(method, length, k, d, inputs.get((method, d)),
                         checked, time.time() - t0, rate=rate))
      d_fit = rows[-1]["d"]
      if (rows[-1]["method"] == "fitted" and length <= args.favor_max_length
          and d_fit <= args.max_d):
        x1, x2 = inputs["fitted", d_fit]
        for m in common.int_list(args.features):
          t0 = time.time()
          m_LL = patterns.favor_matrix(x1, x2, m, args.seed)
          within, support = patterns.row_scores(m_LL, a, eps)
          rows.append(_row(f"favor_m{m}", length, k, d_fit, (x1, x2),
                           within == 1.0, time.time() - t0,
                           within=within, support=support))
  return rows


def _row(method, length, k, d, x, checked, seconds, within=None,
         support=None, rate=float("nan")):
  norm = (float(np.linalg.norm(x[0], axis=1).max() *
                np.linalg.norm(x[1], axis=1).max()) if x else float("nan"))
  row = {"method": method, "L": length, "k": k, "d": d, "input_width": 2 * d,
         "success_rate": rate, "verified": checked, "rows_within": within,
         "rows_support": support,
         "max_norm_product": round(norm, 3), "seconds": round(seconds, 1)}
  print(row, flush=True)
  return row


def fit_log(rows, method, k, max_d):
  """(b, r2, alpha): d = a + b log2 L fit and its R^2; d ~ L^alpha fit."""
  pts = [(r["L"], r["d"]) for r in rows
         if r["method"] == method and r["k"] == k and r["d"] <= max_d]
  if len(pts) < 3:
    return None
  return common.log_fit(*zip(*pts))


def summary(rows, max_d) -> list[str]:
  lines = []
  for method in ("construction", "fitted"):
    for k in sorted({r["k"] for r in rows}):
      fit = fit_log(rows, method, k, max_d)
      if fit:
        lines.append(f"{method} k={k}: d grows by {fit[0]:.1f} per doubling "
                     f"of L (R^2 {fit[1]:.2f}); as a power law d ~ "
                     f"L^{fit[2]:.2f}")
  return lines


def plot(rows, path, max_d):
  fig, (ax, bx) = common.plt.subplots(1, 2, figsize=(10, 3.8))
  colors = {1: "C0", 2: "C1", 4: "C2"}
  for method, style in (("construction", "o-"), ("fitted", "s--")):
    for k in sorted({r["k"] for r in rows}):
      sub = [r for r in rows if r["method"] == method and r["k"] == k
             and r["d"] <= max_d]
      if not sub:
        continue
      fit = fit_log(rows, method, k, max_d)
      label = f"{method}, k={k}" + (f" (+{fit[0]:.0f}/doubling)" if fit
                                    else "")
      ax.plot([r["L"] for r in sub], [r["d"] for r in sub], style,
              color=colors.get(k), label=label)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.set_xlabel("sequence length L")
  ax.set_ylabel("smallest query/key width d (inputs 2d)")
  ax.set_title("Sparse patterns: d against L")
  ax.legend(fontsize=7, loc="lower right")
  favor = [r for r in rows if r["method"].startswith("favor_m")]
  for i, method in enumerate(sorted({r["method"] for r in favor},
                                    key=lambda s: int(s[7:]))):
    for k in sorted({r["k"] for r in favor}):
      sub = [r for r in favor if r["method"] == method and r["k"] == k]
      bx.plot([r["L"] for r in sub], [r["rows_support"] for r in sub],
              ["o-", "s--", "^:"][k.bit_length() - 1], color=f"C{i}",
              label=f"m={method[7:]}, k={k}")
  bx.set_xscale("log", base=2)
  bx.set_ylim(-0.02, 1.02)
  bx.set_xlabel("sequence length L")
  bx.set_ylabel("rows whose top-k is the pattern")
  bx.set_title("FAVOR+ on the fitted inputs")
  bx.legend(fontsize=6)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  common.write_csv(os.path.join(args.out, "expressivity.csv"), rows)
  plot(rows, os.path.join(args.out, "expressivity.png"), args.max_d)
  for line in summary(rows, args.max_d):
    print(line)
  return rows


if __name__ == "__main__":
  main()
