"""Sequence-parallel training: per-device memory against L for P devices,
and a tiny model trained on one sequence of 2^20 tokens.

For each P in `--devices` a subprocess with P forced CPU devices builds the
trainer (`config.mesh.seq = P`: each sequence split over P devices, causal
FAVOR+ exchanging only its `[F, D+1]` states) on the copy task, and
compiles one train step for each L in `--lengths`: the per-device peak is
XLA's compiled memory analysis of that step (temporaries + arguments +
outputs of the partitioned program). Then, with `--long L`, P = max
devices trains `--long-steps` steps at batch 1 and length L and reports the
losses, the seconds per step and the process's peak RSS.

Writes sequence_parallel.csv and sequence_parallel.png into `--out`, and
prints, at the longest length compiled for every P, the memory ratio
P=1 / P=max against the ideal P (target: at least 0.8 of it).

  python -m experiments.scaling.sequence_parallel --out results/sequence_parallel
  python -m experiments.scaling.sequence_parallel --lengths 4096 \
      --devices 1,2 --long 0                        # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from experiments import common

MIB = 2.0 ** 20


def tiny_config(seq_len: int, devices: int):
  """A 2-layer, width-64 causal FAVOR+ model on the copy task."""
  # pylint: disable-next=g-import-not-at-top
  from performer_jax.configs import copy as copy_config
  config = copy_config.get_config("cpu,favor")
  config.data.batch_size, config.data.seq_len = 1, seq_len
  config.model.num_layers, config.model.num_heads = 2, 2
  config.model.emb_dim, config.model.mlp_dim = 64, 128
  config.model.max_len = seq_len
  config.model.posemb = "sinusoidal"  # no [L, D] table to store
  config.model.dropout_rate = 0.0
  config.model.attention.num_features = 32
  config.model.attention.chunk_size = 256
  # One algorithm for every P (on one CPU device "auto" would pick the
  # compiled kernel, which cannot start from other devices' states).
  config.model.attention.implementation = "slim"
  config.model.attention.redraw_every = 0
  config.mesh.data, config.mesh.seq, config.mesh.model = 1, devices, 1
  config.optimizer.warmup_steps = 1
  config.trainer.steps = 10
  config.trainer.progress = "log"
  return config


def _abstract_batch(trainer):
  # pylint: disable-next=g-import-not-at-top
  import jax
  from performer_jax.tasks import base  # pylint: disable=g-import-not-at-top
  cfg = trainer.config.data
  dtypes = {k: v.dtype for k, v in trainer.task.train.get_batch(0).items()}
  return {k: jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len), dtypes[k],
                                  sharding=trainer.batch_sharding)
          for k in base.BATCH_KEYS}


def worker(devices: int, lengths: list[int], long_len: int,
           long_steps: int) -> None:
  """Runs in a process with `devices` devices; prints one JSON line."""
  # pylint: disable-next=g-import-not-at-top
  from performer_jax.train import trainer as trainer_lib
  rows = []
  for seq_len in lengths:
    trainer = trainer_lib.Trainer(tiny_config(seq_len, devices))
    with trainer.context():
      compiled = trainer.train_step.lower(
          trainer.abstract_state, _abstract_batch(trainer)).compile()
    stats = compiled.memory_analysis()
    total = (stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes)
    rows.append({"devices": devices, "length": seq_len,
                 "peak_mib_per_device": total / MIB,
                 "temp_mib_per_device": stats.temp_size_in_bytes / MIB})
  long_run = None
  if long_len:
    trainer = trainer_lib.Trainer(tiny_config(long_len, devices))
    state = trainer.init_state()
    losses, seconds = [], []
    for step in range(long_steps):
      batch = trainer.get_batch(trainer.task.train, step)
      start = time.perf_counter()
      with trainer.context():
        state, metrics = trainer.train_step(state, batch)
      loss = float(metrics["loss_sum"] / max(float(metrics["weight_sum"]),
                                             1.0))
      seconds.append(time.perf_counter() - start)
      losses.append(loss)
    long_run = {"devices": devices, "length": long_len, "losses": losses,
                "seconds_per_step": seconds,
                "peak_rss_gib": resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
  print("RESULT " + json.dumps({"rows": rows, "long": long_run}))


def run_worker(devices: int, args) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") +
      f" --xla_force_host_platform_device_count={devices}").strip())
  long_len = args.long if devices == max(args.devices) else 0
  cmd = [sys.executable, "-m", "experiments.scaling.sequence_parallel",
         "--worker", str(devices), "--lengths",
         ",".join(map(str, args.lengths)), "--long", str(long_len),
         "--long-steps", str(args.long_steps)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"P={devices} failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")


def plot(rows, path: str) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for p in sorted({r["devices"] for r in rows}):
    mine = [r for r in rows if r["devices"] == p]
    ax.plot([r["length"] for r in mine],
            [r["peak_mib_per_device"] for r in mine], "o-", label=f"P={p}")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.set_xlabel("sequence length L (one sequence, batch 1)")
  ax.set_ylabel("peak memory per device (MiB)")
  ax.set_title("train step, causal FAVOR+, sequence over P devices",
               fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  common.save_figure(fig, path)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", type=common.int_list, default=[1, 2, 4, 8])
  p.add_argument("--lengths", type=common.int_list,
                 default=[2 ** 14, 2 ** 16, 2 ** 18])
  p.add_argument("--long", type=int, default=2 ** 20,
                 help="train at this length on max(--devices) (0: skip)")
  p.add_argument("--long-steps", type=int, default=3)
  p.add_argument("--out", default="results/sequence_parallel")
  p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args.worker, args.lengths, args.long, args.long_steps)
    return
  rows, long_run = [], None
  for devices in args.devices:
    result = run_worker(devices, args)
    rows += result["rows"]
    long_run = result["long"] or long_run
    for r in result["rows"]:
      print(f"P={devices} L={r['length']:>8}: "
            f"{r['peak_mib_per_device']:9.1f} MiB per device", flush=True)
  common.write_csv(os.path.join(args.out, "sequence_parallel.csv"), rows)
  plot(rows, os.path.join(args.out, "sequence_parallel.png"))
  lo, hi = min(args.devices), max(args.devices)
  length = max(args.lengths)
  mem = {r["devices"]: r["peak_mib_per_device"] for r in rows
         if r["length"] == length}
  if hi > lo:
    ratio, ideal = mem[lo] / mem[hi], hi / lo
    print(f"L={length}: P={lo} / P={hi} memory = {ratio:.2f} (ideal "
          f"{ideal:.0f}; {ratio / ideal:.2f} of ideal, target >= 0.8)")
  if long_run:
    with open(os.path.join(args.out, "long_run.json"), "w") as f:
      json.dump(long_run, f, indent=1)
    print(f"L={long_run['length']} on {long_run['devices']} devices: losses "
          f"{[round(x, 3) for x in long_run['losses']]}, "
          f"{[round(s, 1) for s in long_run['seconds_per_step']]} s/step "
          f"(the first compiles), peak RSS {long_run['peak_rss_gib']:.1f} "
          "GiB")


if __name__ == "__main__":
  main()
