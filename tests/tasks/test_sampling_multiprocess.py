"""Two processes read disjoint rows whose union is the global batch, each
touching only about half of the records."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import inputs

STEPS = 6
WORKER = r"""
import json, sys
import numpy as np
from performer_jax.tasks import protein
data = protein.MLM.data.parse(json.loads(sys.argv[1]))
task = protein.build(data, process_index=int(sys.argv[2]),
                     process_count=int(sys.argv[3]))
batches = [task.train.get_batch(s) for s in range(int(sys.argv[4]))]
np.savez(sys.argv[5], **{f"{k}_{s}": b[k] for s, b in enumerate(batches)
                         for k in b})
print(json.dumps({"records_read": task.train.proteins.records_read,
                  "records": len(task.train.proteins)}))
"""


def test_two_processes_read_disjoint_halves(tmp_path):
  rng = np.random.default_rng(0)
  letters = list("ACDEFGHIKLMNPQRSTVWY")
  fasta = tmp_path / "train.fa"
  fasta.write_text("".join(f">s{i}\n" + "".join(rng.choice(letters,
                                                           rng.integers(5, 40)))
                           + "\n" for i in range(400)))
  evals = tmp_path / "eval.fa"
  evals.write_text(">e\nMKV\n")
  data = {"batch_size": 16, "seq_len": 24, "seed": 3,
          "train_path": str(fasta), "eval_path": str(evals),
          "num_eval_batches": 0, "skip_invalid": True, "mask_rate": 0.15,
          "verify": False}
  def run(index, count, out):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(data), str(index),
         str(count), str(STEPS), str(out)], env=inputs.subprocess_env(),
        cwd=inputs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
  procs = [run(0, 1, tmp_path / "one.npz"), run(0, 2, tmp_path / "p0.npz"),
           run(1, 2, tmp_path / "p1.npz")]
  stats = []
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stats.append(json.loads(out.strip().splitlines()[-1]))
  one = np.load(tmp_path / "one.npz")
  halves = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
  for key in one.files:
    np.testing.assert_array_equal(
        np.concatenate([halves[0][key], halves[1][key]]), one[key])
    assert halves[0][key].shape[0] == one[key].shape[0] // 2
  # Each process read the records of its own 8 rows per step, not 16.
  assert stats[0]["records_read"] == 16 * STEPS
  assert stats[1]["records_read"] == stats[2]["records_read"] == 8 * STEPS
