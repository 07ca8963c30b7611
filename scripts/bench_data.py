"""The data layer at scale: prepare throughput and memory, and a training
process's memory and start-up on prepared datasets of growing size.

Generates synthetic UniProt-style FASTA (random standard residues, lengths
50-700, 60-column lines) and ImageNet64-format npz batches, prepares them
with `performer-data prepare`, and trains the protein_mlm `smoke` model on
the prepared FASTA. Every process is measured from outside: peak RSS of the
process tree (polled from /proc) and wall time. Then it trains each task's
`cpu` config for a few steps and reports `data_wait` as a fraction of the
step time. The integrity stage times `performer-data verify` on a prepared
FASTA (throughput, peak RSS; the files are in the page cache, just
written) and random record reads and protein_mlm batches with the record
reader before offsets were checked, today's reader without the check, and
today's reader, in alternating rounds in one process.

  python scripts/bench_data.py --fasta-gb 2,10 --npz-batches 2,10 \
      --out /tmp/bench_data          # the figures in docs/benchmarks.md
  python scripts/bench_data.py --fasta-gb 0.05,0.25 --npz-batches 1,5 \
      --cpu-steps 20 --out /tmp/bd    # a quick check (about 2 minutes)
  python scripts/bench_data.py --stages integrity --integrity-gb 2 \
      --out /tmp/bench_integrity      # verify throughput, read-check cost

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

from performer_jax.data import dataset as prepared
from performer_jax.data import verify
from performer_jax.tasks import protein

GIB = 2.0 ** 30
STAGES = ("fasta", "npz", "data_wait", "integrity")


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


class ReaderBefore(prepared.Sequences):
  """The record reader as it was before offsets were checked (numpy search
  and decode, no check): the baseline of `bench_integrity`."""

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < int(self.starts[-1]):
      raise IndexError(index)
    shard = int(np.searchsorted(self.starts, index, side="right")) - 1
    self.records_read += 1
    local, name = index - int(self.starts[shard]), self.names[shard]
    bounds = np.frombuffer(self._pread(name, "index", 16, local * 8),
                           prepared.INDEX_DTYPE)
    start, end = int(bounds[0]), int(bounds[1])
    return np.frombuffer(self._pread(name, "tokens", end - start, start),
                         np.uint8)


class ReaderUnchecked(prepared.Sequences):
  """Today's reader without the offset check: what the check costs."""

  def __getitem__(self, index):
    shard, local = self._locate(index)
    name = self.names[shard]
    # pylint: disable-next=protected-access
    start, end = prepared._BOUNDS.unpack(self._pread(name, "index", 16,
                                                     local * 8))
    return np.frombuffer(self._pread(name, "tokens", end - start, start),
                         np.uint8)


def alternating(work: dict, rounds: int) -> dict[str, float]:
  """Median seconds of each `work[name]()` over `rounds` rounds, the order
  reversed every other round (drift in the machine's speed cancels)."""
  times = {name: [] for name in work}
  for r in range(rounds):
    for name in (list(work) if r % 2 == 0 else list(work)[::-1]):
      start = time.perf_counter()
      work[name]()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def bench_integrity(args) -> list[dict]:
  rows = []
  for gb in args.integrity_gb:
    raw = os.path.join(args.out, f"integrity_{gb}gb.fa")
    root = os.path.join(args.out, f"integrity_{gb}gb")
    synthetic_fasta(raw, int(gb * 1e9))
    shutil.rmtree(root, ignore_errors=True)
    measure(prepare_cmd("fasta", raw, root))
    os.remove(raw)
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, names in os.walk(root) for f in names)
    # The command for its memory (the whole process), then the function for
    # the throughput of the verification alone (no interpreter start-up).
    check = measure([sys.executable, "-m", "performer_jax.data.prepare",
                     "verify", root])
    report = verify.verify(root)
    readers = {"before": ReaderBefore(root), "unchecked":
               ReaderUnchecked(root), "checked": prepared.Sequences(root)}
    order = np.random.default_rng(0).integers(
        0, len(readers["checked"]), args.reads).tolist()
    reads = alternating({name: lambda r=reader: [r[i] for i in order]
                         for name, reader in readers.items()}, args.rounds)
    sources = {name: protein.MlmSource(
        reader, mask_rate=0.15, seed=0, train=True, global_batch_size=16,
        seq_len=256, process_index=0, process_count=1)
               for name, reader in readers.items()}
    batches = alternating({name: lambda s=source: [
        s.get_batch(step) for step in range(args.batches)]
                           for name, source in sources.items()}, args.rounds)
    read_us = {k: v / args.reads * 1e6 for k, v in reads.items()}
    batch_ms = {k: v / args.batches * 1e3 for k, v in batches.items()}
    rows.append({
        "dataset_gb": size / 1e9, "shards": len(readers["checked"].names),
        "verify_command_s": check["seconds"],
        "verify_peak_rss_gib": check["peak_rss"] / GIB,
        "verify_s": report.seconds, "verify_gb_s": report.bytes / 1e9
        / report.seconds, "verify_workers": os.cpu_count(),
        "read_us": read_us, "batch_ms_16x256": batch_ms,
        "check_cost_reads_pct": 100 * (read_us["checked"]
                                       / read_us["unchecked"] - 1),
        "vs_before_reads_pct": 100 * (read_us["checked"]
                                      / read_us["before"] - 1),
        "vs_before_batches_pct": 100 * (batch_ms["checked"]
                                        / batch_ms["before"] - 1)})
    print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(root)
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
  p.add_argument("--stages", type=lambda s: s.split(","), default=STAGES,
                 help=f"a comma-separated subset of {','.join(STAGES)}")
  p.add_argument("--integrity-gb", type=floats, default=[2.0])
  p.add_argument("--reads", type=int, default=200_000,
                 help="random record reads per reader and round")
  p.add_argument("--batches", type=int, default=200,
                 help="protein_mlm batches per reader and round")
  p.add_argument("--rounds", type=int, default=7)
  args = p.parse_args(argv)
  unknown = sorted(set(args.stages) - set(STAGES))
  if unknown:
    p.error(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
  os.makedirs(args.out, exist_ok=True)
  stages = {"fasta": bench_fasta, "npz": bench_npz,
            "data_wait": bench_data_wait, "integrity": bench_integrity}
  results = {name: stages[name](args) for name in STAGES
             if name in args.stages}
  with open(os.path.join(args.out, "bench_data.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {os.path.join(args.out, 'bench_data.json')}")


if __name__ == "__main__":
  main()
