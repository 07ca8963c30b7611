"""Speed and memory of attention vs sequence length (paper Fig. 3 / LRA).

fwd+bwd time and peak memory of exact softmax (bidirectional and causal),
FAVOR+ (bidirectional and causal) and exact L2 attention at batch 2, 4 heads,
head_dim 64, 256 features, for L = 2^9 .. 2^16. Quadratic methods are timed
up to `--max-quadratic-length` and never allocated beyond the memory budget
(60% of available memory, at most 16 GiB); beyond that their memory is the
estimate of ~4 float32 [B, H, L, L] buffers, drawn dashed, against the 24 GiB
of this machine. Timing and memory code: experiments/scaling/timing.py.

Writes scaling.csv and scaling.png (time, memory, speedup over exact).

  python -m experiments.scaling.run --out results/scaling
  python -m experiments.scaling.run --quick
"""

from __future__ import annotations

import argparse
import math
import os
import time

from experiments import common
from experiments.scaling import timing
from performer_jax import attention

MACHINE_BYTES = 24 * timing.GIB
# Speedup panel: FAVOR method -> the exact method it replaces.
BASELINES = {"favor": "exact", "favor_causal": "exact_causal",
             "favor_causal_autodiff": "exact_causal"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/scaling")
  p.add_argument("--min-log2", type=int, default=9)
  p.add_argument("--max-log2", type=int, default=16)
  p.add_argument("--max-quadratic-length", type=int, default=8192,
                 help="time exact/L2 attention only up to this length")
  p.add_argument("--chunk-size", type=int, default=attention.DEFAULT_CHUNK_SIZE)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--max-seconds", type=float, default=20.0)
  p.add_argument("--methods", default=",".join(timing.METHODS))
  p.add_argument("--quick", action="store_true",
                 help="L = 2^7 .. 2^9, one repeat (for tests)")
  args = p.parse_args(argv)
  if args.quick:
    args.min_log2, args.max_log2, args.repeats = 7, 9, 1
  args.methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(args.methods) - set(timing.METHODS))
  if unknown:
    p.error(f"unknown --methods {unknown}; choose from {list(timing.METHODS)}")
  return args


def run(args) -> list[dict]:
  shape = timing.Shape()
  budget = timing.default_budget_bytes()
  rows = []
  for log2 in range(args.min_log2, args.max_log2 + 1):
    length = 2 ** log2
    for method in args.methods:
      if method in timing.QUADRATIC and length > args.max_quadratic_length:
        est = timing.estimate_quadratic_bytes(shape, length)
        row = {"method": method, "length": length, "chunk_size": 0,
               "seconds": math.nan, "repeats": 0, "peak_bytes": est,
               "gflops": math.nan,
               "status": f"not run (> --max-quadratic-length); estimated "
                         f"{est / timing.GIB:.1f} GiB"}
      else:
        row = timing.measure(method, length, shape,
                             chunk_size=args.chunk_size,
                             repeats=args.repeats, budget_bytes=budget,
                             max_seconds=args.max_seconds)
      row["fits_machine"] = row["peak_bytes"] <= MACHINE_BYTES
      rows.append(row)
      print(f"  {method:13s} L={length:6d} {row['seconds']:9.4f}s "
            f"{row['peak_bytes'] / 2 ** 20:11.1f} MiB  {row['status']}",
            flush=True)
  return rows


def speedups(rows) -> list[tuple[str, int, float, float]]:
  """(method, L, time ratio exact/favor, memory ratio exact/favor)."""
  index = {(r["method"], r["length"]): r for r in rows}
  out = []
  for method, base in BASELINES.items():
    for (m, length), r in sorted(index.items()):
      b = index.get((base, length))
      if m != method or b is None:
        continue
      out.append((method, length, b["seconds"] / r["seconds"],
                  b["peak_bytes"] / r["peak_bytes"]))
  return out


def plot(path, rows, args):
  fig, axes = common.plt.subplots(1, 3, figsize=(16, 4.5))
  colors = {m: f"C{i}" for i, m in enumerate(timing.METHODS)}
  for method in args.methods:
    sel = sorted((r for r in rows if r["method"] == method),
                 key=lambda r: r["length"])
    ok = [r for r in sel if r["status"] == "ok"]
    axes[0].plot([r["length"] for r in ok], [r["seconds"] for r in ok],
                 marker="o", color=colors[method], label=method)
    axes[1].plot([r["length"] for r in ok],
                 [r["peak_bytes"] / timing.GIB for r in ok], marker="o",
                 color=colors[method], label=method)
    est = [r for r in sel if r["status"] != "ok"]
    if est and ok:
      est = [ok[-1]] + est
    axes[1].plot([r["length"] for r in est],
                 [r["peak_bytes"] / timing.GIB for r in est], ls="--",
                 marker="x", color=colors[method])
  ok = [r for r in rows if r["status"] == "ok"]
  if ok:
    l0 = min(r["length"] for r in ok)
    t0 = min(r["seconds"] for r in ok if r["length"] == l0)
    ls = sorted({r["length"] for r in rows})
    axes[0].plot(ls, [t0 * l / l0 for l in ls], "k:", lw=1, label="~ L")
    axes[0].plot(ls, [t0 * (l / l0) ** 2 for l in ls], "k-.", lw=1,
                 label="~ L^2")
  axes[0].set(xscale="log", yscale="log", xlabel="L", ylabel="fwd+bwd s",
              title="time (batch 2, 4 heads, d 64, m 256)")
  axes[1].axhline(MACHINE_BYTES / timing.GIB, color="k", lw=1)
  axes[1].text(2 ** args.min_log2, MACHINE_BYTES / timing.GIB * 1.15,
               "24 GiB (this machine)", fontsize=8)
  axes[1].set(xscale="log", yscale="log", xlabel="L", ylabel="peak GiB",
              title="peak memory (XLA compiled; dashed = estimated)")
  for method, _ in BASELINES.items():
    sp = [(l, t, m) for me, l, t, m in speedups(rows) if me == method]
    axes[2].plot([l for l, _, _ in sp], [t for _, t, _ in sp], marker="o",
                 color=colors[method], label=f"{method}: time")
    axes[2].plot([l for l, _, _ in sp], [m for _, _, m in sp], marker="s",
                 ls="--", color=colors[method], label=f"{method}: memory")
  axes[2].axhline(1.0, color="k", lw=1)
  axes[2].set(xscale="log", yscale="log", xlabel="L",
              ylabel="exact / FAVOR+", title="speedup over exact attention")
  for ax in axes:
    ax.legend(fontsize=7)
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  rows = run(args)
  keys = ["method", "length", "chunk_size", "seconds", "repeats",
          "peak_bytes", "gflops", "fits_machine", "status"]
  common.write_csv(os.path.join(args.out, "scaling.csv"),
                   [{k: r[k] for k in keys} for r in rows])
  plot(os.path.join(args.out, "scaling.png"), rows, args)
  for method, length, t, m in speedups(rows):
    print(f"{method:13s} L={length:6d}: {t:7.2f}x faster, {m:7.2f}x less "
          "memory than exact")
  for method in args.methods:
    sel = [r for r in rows if r["method"] == method and r["status"] == "ok"]
    if len(sel) >= 2:
      a, b = sel[-2], sel[-1]
      slope = math.log(b["seconds"] / a["seconds"]) / math.log(
          b["length"] / a["length"])
      print(f"{method:13s} time exponent between L={a['length']} and "
            f"{b['length']}: {slope:.2f}")
    too_big = [r["length"] for r in rows
               if r["method"] == method and not r["fits_machine"]]
    if too_big:
      print(f"{method:13s} exceeds 24 GiB from L={min(too_big)}")
  print(f"{time.time() - t0:.0f}s; wrote {args.out}/scaling.csv, scaling.png")
  return rows


if __name__ == "__main__":
  main()
