"""Benchmark fwd+bwd time and peak memory of the attention functions.

Runs unchanged on the CPU, a GPU or a TPU (whatever JAX's default backend
is). Measures exact softmax (bidirectional and causal), FAVOR+
(bidirectional and causal, for each chunk size: "favor_causal" is the
shipped default ("auto": the compiled kernel on the CPU, "parallel"
elsewhere), "favor_causal_slim" the scan over chunks with the recomputing
backward, "favor_causal_parallel" the scan-free pass, "favor_causal_autodiff"
the same function under plain autodiff), exact L2 attention, and exact
attention as JAX ships it, `jax.nn.dot_product_attention` ("dpa",
"dpa_causal": cuDNN flash attention on NVIDIA GPUs for bfloat16 inputs,
XLA's dense version elsewhere) at batch 2, 4 heads, head_dim 64, 256
features; prints a table with ratios to exact attention (and to dpa) and
the achieved GFLOP/s against a plain matmul measured in the same run, then
PASS/FAIL for the CPU performance targets:

  T1  causal FAVOR+ at L=4096 takes <= 1.5x the bidirectional time;
  T2  causal FAVOR+ beats exact causal attention at every L >= 1024;
  T3  FAVOR+ time(16k) / time(4k) <= 4.5, and L=65536 fits in memory;
  T4  bidirectional FAVOR+ at L=4096 reaches >= 0.5x the matmul GFLOP/s.

Targets use FAVOR's default chunk size when it is among `--chunk-sizes`
(else the first one); T1 and T3 are also reported for the autodiff path. Peak
memory is XLA's compiled memory analysis (temp + arguments + outputs; see
experiments/scaling/timing.py); `--rss` adds the process RSS peak of each
configuration measured in a fresh subprocess.
Exact attention is skipped, never allocated, where it would exceed the memory
budget (60% of available memory, at most 16 GiB, on the CPU; 90% of the
device's free memory on an accelerator).

  python scripts/bench_attention.py --lengths 1024,4096 --chunk-sizes 32,64,128
  python scripts/bench_attention.py --preset accelerator   # GPU / TPU story

`--preset accelerator` is the one command for an accelerator (a few
minutes on one GPU): FAVOR+ "pallas", "parallel" and "slim" against cuDNN
flash attention (`jax.nn.dot_product_attention(..., implementation=
"cudnn")`), bf16 inputs, B4 H8 D64 m256, causal and bidirectional, L = 4k,
16k, 64k (512 on the CPU, where cuDNN rows fail and "pallas" is interpret
mode): fwd+bwd ms, nominal TFLOP/s, compiled temp memory, the compile
time of each fwd+bwd program, and FAVOR+'s gradient error against float32
"autodiff" on the same inputs; then the train step's compile time,
softmax against FAVOR+ (experiments/scaling/accelerator.py).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.scaling import accelerator
from experiments.scaling import timing
from performer_jax import allocator
from performer_jax import attention

MIB = 2.0 ** 20
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACCELERATOR_METHODS = ("favor_causal_slim", "favor_causal_parallel",
                       "favor_causal", "exact_causal", "dpa_causal", "favor",
                       "dpa")


def _parse_ints(text: str) -> list[int]:
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers like 1024,4096, got {text!r}")
  if not values or min(values) <= 0:
    raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
  return values


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--lengths", type=_parse_ints, default=None,
                 help="default 1024,4096,16384,65536")
  p.add_argument("--chunk-sizes", type=_parse_ints, default=None,
                 help=f"default {attention.DEFAULT_CHUNK_SIZE}")
  p.add_argument("--methods", default=None,
                 help=f"comma-separated subset of {list(timing.ALL_METHODS)} "
                 "(default: all)")
  p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                 help="dtype of q, k, v (default float32; bfloat16 with "
                 "--preset accelerator)")
  p.add_argument("--preset", choices=["accelerator"], default=None,
                 help="accelerator: long causal lengths, slim vs parallel vs "
                 "exact and dot_product_attention, bfloat16 inputs; "
                 "explicit --lengths/--methods/--chunk-sizes/--dtype win")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-tcmalloc", action="store_true",
                 help="keep the system malloc (see performer_jax/allocator.py)")
  p.add_argument("--max-seconds", type=float, default=30.0,
                 help="stop repeating a configuration after this long")
  p.add_argument("--budget-gib", type=float, default=None,
                 help="memory budget per configuration (default: 60%% of "
                 "available memory, at most 16)")
  p.add_argument("--rss", action="store_true",
                 help="also measure peak RSS per configuration in a "
                 "subprocess")
  p.add_argument("--csv", default=None, help="write all rows to this CSV")
  args = p.parse_args(argv)
  _apply_preset(args)
  methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(methods) - set(timing.ALL_METHODS))
  if unknown:
    p.error(f"unknown --methods {unknown}; choose from "
            f"{list(timing.ALL_METHODS)}")
  args.methods = methods
  if args.budget_gib is not None:
    args.budget_gib = min(args.budget_gib, timing.MAX_BUDGET_BYTES / 2 ** 30)
  return args


def _apply_preset(args) -> None:
  """Fills the options left unset, from `--preset` or the defaults."""
  if args.preset == "accelerator":
    on_cpu = jax.default_backend() == "cpu"
    defaults = dict(
        lengths=[512] if on_cpu else [4096, 16384, 65536],
        methods=",".join(ACCELERATOR_METHODS), chunk_sizes=[64, 256],
        dtype="bfloat16")
  else:
    defaults = dict(lengths=[1024, 4096, 16384, 65536],
                    methods=",".join(timing.ALL_METHODS),
                    chunk_sizes=[attention.DEFAULT_CHUNK_SIZE],
                    dtype="float32")
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)


def run(args) -> tuple[list[dict], float]:
  """Measures every configuration; returns rows and the matmul GFLOP/s."""
  shape = timing.Shape()
  budget = (timing.default_budget_bytes() if args.budget_gib is None
            else args.budget_gib * 2 ** 30)
  mm = timing.matmul_gflops()
  dpa = timing.dot_product_attention_backend(shape, DTYPES[args.dtype])
  alloc = "tcmalloc" if allocator.tcmalloc_active() else "system malloc"
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"inputs {args.dtype}; dot_product_attention: {dpa}\n"
        f"matmul 1024^3 float32: {mm:.1f} GFLOP/s (best of 3 rounds of 10); "
        f"memory budget {budget / 2 ** 30:.1f} GiB; allocator {alloc}")
  rows = []
  for length in args.lengths:
    for method in args.methods:
      chunks = args.chunk_sizes if method in timing.CHUNKED else [0]
      for chunk in chunks:
        row = timing.measure(method, length, shape, chunk_size=chunk,
                             repeats=args.repeats, budget_bytes=budget,
                             max_seconds=args.max_seconds,
                             dtype=DTYPES[args.dtype])
        if args.rss and row["status"] == "ok":
          row["rss_bytes"] = timing.peak_rss_subprocess(method, length, shape,
                                                        chunk)
        rows.append(row)
        print(f"  {method:22s} L={length:6d} C={row['chunk_size']:4d} "
              f"{row['seconds']:9.4f}s {row['peak_bytes'] / MIB:10.1f} MiB "
              f"{row['status']}", flush=True)
  return rows, mm


def _lookup(rows, method, length, chunk=None):
  for r in rows:
    if r["method"] == method and r["length"] == length and (
        chunk is None or r["chunk_size"] == chunk):
      return r
  return None


def _ratio(rows, r, ref_name, key):
  ref = _lookup(rows, ref_name, r["length"])
  if ref is None or ref["status"] != "ok" or r["status"] != "ok":
    return math.nan
  return r[key] / ref[key]


def print_table(rows, mm_gflops):
  """One line per configuration with ratios to the matching exact method
  (and to dot_product_attention when it was measured)."""
  with_dpa = any(r["method"] in timing.FLASH for r in rows)
  print(f"\n{'method':22s} {'L':>6s} {'C':>4s} {'sec':>9s} {'x exact':>8s} "
        f"{'MiB':>9s} {'mem x ex':>8s} {'GFLOP/s':>8s} {'% mm':>6s}"
        + (f" {'x dpa':>8s} {'mem x dpa':>9s}" if with_dpa else ""))
  for r in rows:
    causal = timing.ALL_METHODS[r["method"]][1]
    exact = "exact_causal" if causal else "exact"
    dpa = "dpa_causal" if causal else "dpa"
    status = "" if r["status"] == "ok" else "  " + r["status"]
    dpa_cols = (f" {_ratio(rows, r, dpa, 'seconds'):8.3f} "
                f"{_ratio(rows, r, dpa, 'peak_bytes'):9.3f}"
                if with_dpa else "")
    print(f"{r['method']:22s} {r['length']:6d} {r['chunk_size']:4d} "
          f"{r['seconds']:9.4f} {_ratio(rows, r, exact, 'seconds'):8.3f} "
          f"{r['peak_bytes'] / MIB:9.1f} "
          f"{_ratio(rows, r, exact, 'peak_bytes'):8.3f} {r['gflops']:8.1f} "
          f"{100 * r['gflops'] / mm_gflops:6.1f}{dpa_cols}{status}")


def check_targets(rows, mm_gflops, chunk) -> dict[str, str]:
  """PASS / FAIL / n/a (with the numbers) for targets T1-T4."""
  def ok(r):
    return r is not None and r["status"] == "ok"
  res = {}
  bi = _lookup(rows, "favor", 4096)
  for causal in timing.CHUNKED:
    name = f"T1 {causal}/favor at 4k <= 1.5"
    ca = _lookup(rows, causal, 4096, chunk)
    if ok(bi) and ok(ca):
      ratio = ca["seconds"] / bi["seconds"]
      res[name] = f"{'PASS' if ratio <= 1.5 else 'FAIL'} ({ratio:.2f})"
    elif causal == "favor_causal":
      res[name] = "n/a (needs favor, favor_causal, L=4096)"
  verdicts = []
  for r in rows:
    if r["method"] == "favor_causal" and r["chunk_size"] == chunk and (
        r["length"] >= 1024):
      ex = _lookup(rows, "exact_causal", r["length"])
      if ok(ex) and ok(r):
        verdicts.append((r["length"], r["seconds"] / ex["seconds"]))
  if verdicts:
    worst = max(v for _, v in verdicts)
    detail = ", ".join(f"L={l}: {v:.2f}x" for l, v in verdicts)
    res["T2 causal favor < exact causal"] = (
        f"{'PASS' if worst < 1 else 'FAIL'} ({detail})")
  else:
    res["T2 causal favor < exact causal"] = "n/a (needs exact_causal, L>=1024)"
  for method in ("favor",) + timing.CHUNKED:
    c = chunk if method in timing.CHUNKED else None
    r4, r16 = _lookup(rows, method, 4096, c), _lookup(rows, method, 16384, c)
    r64 = _lookup(rows, method, 65536, c)
    parts, passed = [], True
    if ok(r4) and ok(r16):
      ratio = r16["seconds"] / r4["seconds"]
      passed &= ratio <= 4.5
      parts.append(f"16k/4k {ratio:.2f}")
    else:
      parts.append("16k/4k n/a")
    if r64 is not None:
      passed &= ok(r64)
      parts.append(f"64k {r64['status']}, "
                   f"{r64['peak_bytes'] / MIB:.0f} MiB")
    else:
      parts.append("64k n/a")
    measured = ok(r4) and ok(r16) or r64 is not None
    if not measured and method == "favor_causal_autodiff":
      continue
    verdict = ("PASS" if passed else "FAIL") if measured else "n/a"
    res[f"T3 {method} scaling"] = f"{verdict} ({'; '.join(parts)})"
  if ok(bi):
    frac = bi["gflops"] / mm_gflops
    res["T4 bidir favor 4k >= 0.5 matmul GFLOP/s"] = (
        f"{'PASS' if frac >= 0.5 else 'FAIL'} ({bi['gflops']:.1f} vs "
        f"{mm_gflops:.1f} GFLOP/s = {frac:.2f})")
  else:
    res["T4 bidir favor 4k >= 0.5 matmul GFLOP/s"] = "n/a (needs favor, L=4096)"
  return res


def write_csv(path, rows, mm_gflops):
  keys = ["method", "length", "chunk_size", "seconds", "repeats",
          "peak_bytes", "gflops", "status", "rss_bytes"]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys + ["matmul_gflops"])
    w.writeheader()
    for r in rows:
      w.writerow({**{k: r.get(k, "") for k in keys},
                  "matmul_gflops": mm_gflops})


def main(argv=None):
  args = parse_args(argv)
  if args.preset == "accelerator":
    accelerator.run_table(args.lengths, args.repeats)
    return
  rows, mm = run(args)
  # The reference rate again at the end: the higher reading is kept, so a
  # slow moment of the machine cannot flatter the GFLOP/s fraction.
  mm = max(mm, timing.matmul_gflops())
  print_table(rows, mm)
  chunk = (attention.DEFAULT_CHUNK_SIZE
           if attention.DEFAULT_CHUNK_SIZE in args.chunk_sizes
           else args.chunk_sizes[0])
  print(f"\ntargets (favor_causal chunk size {chunk}):")
  for name, verdict in check_targets(rows, mm, chunk).items():
    print(f"  {name:44s} {verdict}")
  if args.csv:
    write_csv(args.csv, rows, mm)
    print(f"wrote {args.csv}")


if __name__ == "__main__":
  if "--no-tcmalloc" not in sys.argv:
    # XLA:CPU temporaries page-fault on every call under glibc malloc; see
    # performer_jax/allocator.py.
    allocator.reexec_under_tcmalloc([os.path.abspath(__file__),
                                     *sys.argv[1:]])
  main()
