"""The data layer at scale: prepare throughput and memory, and a training
process's memory and start-up on prepared datasets of growing size.

Generates synthetic UniProt-style FASTA (random standard residues, lengths
50-700, 60-column lines) and ImageNet64-format npz batches, prepares them
with `performer-data prepare`, and trains the protein_mlm `smoke` model on
the prepared FASTA. Every process is measured from outside: peak RSS of the
process tree (polled from /proc) and wall time. Then it trains each task's
`cpu` config for a few steps and reports `data_wait` as a fraction of the
step time.

  python scripts/bench_data.py --fasta-gb 2,10 --npz-batches 2,10 \
      --out /tmp/bench_data          # the figures in docs/benchmarks.md
  python scripts/bench_data.py --fasta-gb 0.05,0.25 --npz-batches 1,5 \
      --cpu-steps 20 --out /tmp/bd    # a quick check (about 2 minutes)

Targets: prepare >= 50 MB/s of FASTA per core with peak RSS <= 2 GiB; a
training process peaks <= 1.5 GiB and reaches its first step within 10 s,
whatever the dataset's size; ImageNet64 prepare memory independent of the
number of images; data_wait <= 2% of the step time at the cpu configs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

GIB = 2.0 ** 30


def tree_rss(pid: int) -> int:
  """Resident bytes of `pid` and its descendants."""
  total, stack = 0, [pid]
  while stack:
    p = stack.pop()
    try:
      with open(f"/proc/{p}/status") as f:
        for line in f:
          if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
      with open(f"/proc/{p}/task/{p}/children") as f:
        stack.extend(int(c) for c in f.read().split())
    except OSError:
      continue
  return total


def measure(cmd: list[str], *, until_file: str | None = None,
            env: dict | None = None) -> dict:
  """Runs `cmd`; returns wall seconds, peak tree RSS and (if `until_file`
  appears) the seconds until it did."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
  peak, first = 0, None
  while proc.poll() is None:
    peak = max(peak, tree_rss(proc.pid))
    if until_file and first is None and os.path.exists(until_file) and (
        os.path.getsize(until_file) > 0):
      first = time.perf_counter() - start
    time.sleep(0.05)
  out, err = proc.communicate()
  if proc.returncode:
    raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
  return {"seconds": time.perf_counter() - start, "peak_rss": peak,
          "first_record_s": first, "stdout": out}


def synthetic_fasta(path: str, size_bytes: int, seed: int = 0) -> int:
  """Writes about `size_bytes` of FASTA; returns the number of records."""
  rng = np.random.default_rng(seed)
  letters = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", np.uint8)
  written = records = 0
  with open(path, "wb") as f:
    while written < size_bytes:
      lengths = rng.integers(50, 700, 4096)
      residues = letters[rng.integers(0, 20, int(lengths.sum()))].tobytes()
      out, pos = [], 0
      for n in lengths:
        seq = residues[pos:pos + n]
        pos += n
        lines = b"\n".join(seq[i:i + 60] for i in range(0, n, 60))
        out.append(b">tr|S%09d|S%09d_SYNTH Synthetic protein OX=9606\n"
                   % (records, records) + lines + b"\n")
        records += 1
      block = b"".join(out)
      f.write(block)
      written += len(block)
  return records


def synthetic_npz(folder: str, batches: int, images: int = 2000) -> None:
  """ImageNet64-format npz batches (channel-major uint8 [N, 12288])."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for k in range(batches):
    data = rng.integers(0, 256, (images, 3 * 64 * 64), np.uint8)
    np.savez(os.path.join(folder, f"train_data_batch_{k + 1}.npz"),
             data=data, labels=rng.integers(1, 1001, images))


def prepare_cmd(fmt: str, inputs: str, output: str) -> list[str]:
  return [sys.executable, "-m", "performer_jax.data.prepare", "prepare",
          "--format", fmt, "--input", inputs, "--output", output]


def train_cmd(config: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "performer_jax.train", f"--config={config}",
          f"--workdir={workdir}", "--config.trainer.progress=log", *overrides]


def bench_fasta(args) -> list[dict]:
  rows = []
  for gb in args.fasta_gb:
    raw = os.path.join(args.out, f"syn_{gb}gb.fa")
    prepared_dir = os.path.join(args.out, f"syn_{gb}gb")
    records = synthetic_fasta(raw, int(gb * 1e9))
    size = os.path.getsize(raw)
    shutil.rmtree(prepared_dir, ignore_errors=True)
    prep = measure(prepare_cmd("fasta", raw, prepared_dir))
    cores = os.cpu_count() or 1
    workdir = os.path.join(args.out, f"train_{gb}gb")
    shutil.rmtree(workdir, ignore_errors=True)
    train = measure(
        train_cmd("protein_mlm:smoke", workdir,
                  f"--config.data.train_path={prepared_dir}",
                  "--config.trainer.steps=30", "--config.trainer.log_every=1",
                  "--config.trainer.eval_every=0"),
        until_file=os.path.join(workdir, "metrics.jsonl"),
        env=dict(os.environ, PERFORMER_JAX_TCMALLOC="0"))
    rows.append({"fasta_gb": size / 1e9, "records": records,
                 "prepare_s": prep["seconds"],
                 "prepare_mb_s": size / 1e6 / prep["seconds"],
                 "prepare_mb_s_per_core": size / 1e6 / prep["seconds"] / cores,
                 "prepare_peak_rss_gib": prep["peak_rss"] / GIB,
                 "train_peak_rss_gib": train["peak_rss"] / GIB,
                 "train_first_step_s": train["first_record_s"]})
    print(json.dumps(rows[-1]), flush=True)
    if not args.keep:
      os.remove(raw)
      shutil.rmtree(prepared_dir)
  return rows


def bench_npz(args) -> list[dict]:
  rows = []
  for batches in args.npz_batches:
    folder = os.path.join(args.out, f"npz_{batches}")
    synthetic_npz(folder, batches)
    output = os.path.join(args.out, f"npz_{batches}_prepared")
    shutil.rmtree(output, ignore_errors=True)
    prep = measure(prepare_cmd("imagenet_npz",
                               os.path.join(folder, "*.npz"), output))
    rows.append({"npz_images": batches * 2000,
                 "prepare_s": prep["seconds"],
                 "prepare_peak_rss_gib": prep["peak_rss"] / GIB})
    print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(folder)
    shutil.rmtree(output)
  return rows


def bench_data_wait(args) -> list[dict]:
  rows = []
  for task in args.tasks:
    workdir = os.path.join(args.out, f"wait_{task}")
    shutil.rmtree(workdir, ignore_errors=True)
    measure(train_cmd(f"{task}:cpu", workdir,
                      f"--config.trainer.steps={args.cpu_steps}",
                      "--config.optimizer.warmup_steps=1",
                      f"--config.trainer.log_every={args.cpu_steps // 2}",
                      "--config.trainer.eval_every=0",
                      f"--config.trainer.checkpoint_every={args.cpu_steps}"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      # The last train window: past the compiling first step.
      last = [r for r in map(json.loads, f) if r["split"] == "train"][-1]
    rows.append({"task": task, "data_wait_s": last["data_wait"],
                 "step_s": 1.0 / last["steps_per_sec"],
                 "data_wait_fraction": last["data_wait"]
                 * last["steps_per_sec"]})
    print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(workdir)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  floats = lambda s: [float(x) for x in s.split(",") if x]
  ints = lambda s: [int(x) for x in s.split(",") if x]
  p.add_argument("--fasta-gb", type=floats, default=[2.0, 10.0])
  p.add_argument("--npz-batches", type=ints, default=[2, 10])
  p.add_argument("--tasks", type=lambda s: s.split(","),
                 default=["protein_mlm", "protein_lm", "text_lm", "pixel_lm"])
  p.add_argument("--cpu-steps", type=int, default=60)
  p.add_argument("--out", default="/tmp/bench_data")
  p.add_argument("--keep", action="store_true", help="keep the FASTA files")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  results = {"fasta": bench_fasta(args), "npz": bench_npz(args),
             "data_wait": bench_data_wait(args)}
  with open(os.path.join(args.out, "bench_data.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {os.path.join(args.out, 'bench_data.json')}")


if __name__ == "__main__":
  main()
