"""The masked-LM corruption of every task that masks, statistically.

Over many batches: the selected fraction of real positions, and for proteins
the 80/10/10 split of the selected ones (MASK / a random standard amino acid
/ unchanged), lie within 5 binomial standard deviations of their rates;
replacements are standard amino acids only; every unselected position holds
the source token, and every row's targets are its source.
"""

import math

import numpy as np
import pytest

from performer_jax.data import fasta
from performer_jax.tasks import copy
from performer_jax.tasks import masking
from performer_jax.tasks import protein
from performer_jax.tasks import TASKS

SIGMAS = 5.0
STEPS = 8


def assert_binomial(count, trials, rate, what):
  """`count` successes of `trials` Bernoulli(rate) draws, within SIGMAS."""
  spread = SIGMAS * math.sqrt(trials * rate * (1 - rate))
  assert trials > 100 and abs(count - trials * rate) <= spread, (
      f"{what}: {count} of {trials}, expected {trials * rate:.0f} "
      f"+- {spread:.0f}")


def make(name, data):
  task = TASKS[name]
  return task.build(task.data.parse(data), process_index=0, process_count=1)


@pytest.fixture(scope="module")
def proteins(tmp_path_factory):
  """Train and eval FASTA files of random sequences, about 1 residue in 20
  non-standard (a kept one stays; a replaced one becomes standard)."""
  rng = np.random.default_rng(11)
  letters = np.array(list(fasta.AMINO_ACIDS))
  p = np.where(np.arange(len(letters)) < 20, 0.95 / 20, 0.05 / 5)
  def seqs(n):
    return ["".join(rng.choice(letters, k, p=p))
            for k in rng.integers(10, 90, n)]
  root = tmp_path_factory.mktemp("proteins")
  paths = {}
  for split, n in (("train", 40), ("eval", 70)):
    records = seqs(n)
    path = root / f"{split}.fa"
    path.write_text("".join(f">{split}{i}\n{s}\n"
                            for i, s in enumerate(records)))
    paths[split] = (str(path), records)
  return paths


def test_protein_mlm_corruption(proteins):
  data = TASKS["protein_mlm"].variant_data("smoke").to_config_dict()
  data.train_path, train = proteins["train"]
  data.eval_path, evals = proteins["eval"]
  data.seq_len, data.batch_size, data.num_eval_batches = 64, 64, 0
  task = make("protein_mlm", data)
  train_text = "|".join(train)
  counts = dict(real=0, selected=0, mask=0, kept=0, replaced=0)
  replacements = set()
  for split, source in (("train", task.train), ("eval", task.eval)):
    for step in range(STEPS if split == "train" else 1):
      b = source.get_batch(step)
      real, selected = b["key_mask"], b["weights"] > 0
      inputs, targets = b["inputs"], b["targets"]
      assert not (selected & ~real).any()
      np.testing.assert_array_equal(inputs[~selected],
                                    np.where(real, targets, 0)[~selected])
      for r in range(real.shape[0]):  # targets: a crop of the row's source
        text = protein.decode(targets[r, real[r]])
        if split == "eval":  # eval row r: sequence r, from its start
          assert evals[(step * 64 + r) % len(evals)].startswith(text)
        else:
          assert text in train_text and "|" not in text
      picked_in, picked_target = inputs[selected], targets[selected]
      counts["real"] += int(real.sum())
      counts["selected"] += int(selected.sum())
      counts["mask"] += int((picked_in == protein.MASK).sum())
      counts["kept"] += int((picked_in == picked_target).sum())
      changed = (picked_in != protein.MASK) & (picked_in != picked_target)
      counts["replaced"] += int(changed.sum())
      replacements |= set(picked_in[changed].tolist())
  mask_rate = task.train.mask_rate
  assert_binomial(counts["selected"], counts["real"], mask_rate, "selected")
  n = counts["selected"]
  # The random 10% draws one of 20 standard residues: 1 in 20 is the
  # original (counted as kept); non-standard originals are never drawn.
  assert_binomial(counts["mask"], n, masking.MASK_FRACTION, "MASK")
  random = masking.RANDOM_FRACTION
  assert_binomial(counts["replaced"] + counts["kept"], n,
                  1 - masking.MASK_FRACTION, "not MASK")
  assert_binomial(counts["replaced"], n, random * (1 - 1 / 20), "replaced")
  standard = set(range(protein.FIRST_AMINO_ACID,
                       protein.FIRST_AMINO_ACID + protein.NUM_STANDARD))
  assert replacements == standard  # every standard residue, nothing else


def test_copy_mlm_corruption():
  """copy's masked LM masks every selected position (no 80/10/10: the
  task's documented rule)."""
  data = TASKS["copy"].variant_data("smoke").to_config_dict()
  data.variant, data.seq_len, data.batch_size = "mlm", 64, 64
  task = make("copy", data)
  real_count = selected_count = 0
  for source in (task.train, task.eval):
    for step in range(4):
      b = source.get_batch(step)
      real, selected = b["key_mask"], b["weights"] > 0
      inputs, targets = b["inputs"], b["targets"]
      assert not (selected & ~real).any()
      assert (inputs[selected] == copy.MASK).all()
      np.testing.assert_array_equal(inputs[~selected], targets[~selected])
      assert (targets[~real] == copy.PAD).all()
      assert (targets[real] >= copy.NUM_SPECIAL).all()
      for r in range(real.shape[0]):  # the source: a sequence twice
        n = int(real[r].sum()) // 2
        assert real[r, :2 * n].all()
        np.testing.assert_array_equal(targets[r, :n], targets[r, n:2 * n])
      real_count += int(real.sum())
      selected_count += int(selected.sum())
  assert_binomial(selected_count, real_count, data.mask_rate, "selected")
