"""A copy task that needs no data files (smoke tests and debugging).

A row is n random tokens, the same n again (n uniform in
[seq_len // 4, seq_len // 2]), then padding. Ids: 0 PAD, 1 BOS, 2 MASK,
3..vocab_size-1 payload.
  causal: inputs = [BOS, s_0 .. s_{L-2}], targets = s, weights 1 on the copy.
  mlm:    a random `mask_rate` fraction of real tokens becomes MASK,
          targets = s, weights 1 on the masked positions.
Batches are a pure function of (seed, split, step): every process makes the
same global batch and keeps its rows, whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from performer_jax.schemas import sections
from performer_jax.tasks import base
from performer_jax.tasks import sampling

PAD, BOS, MASK = 0, 1, 2
NUM_SPECIAL = 3
_SPLITS = {"train": 0, "eval": 1}


@dataclasses.dataclass(frozen=True)
class CopySource:
  """Random-access copy batches for one process (see module docstring)."""

  global_batch_size: int
  seq_len: int
  vocab_size: int
  causal: bool
  mask_rate: float
  seed: int
  split: str
  process_index: int
  process_count: int
  eval_batches: int | None = None

  @property
  def num_batches(self) -> int | None:
    return self.eval_batches

  def get_batch(self, step: int) -> dict[str, np.ndarray]:
    """Returns this process's rows of global batch `step`; see base.py."""
    batch = self._global_batch(step)
    rows = self.global_batch_size // self.process_count
    start = self.process_index * rows
    return {k: v[start:start + rows] for k, v in batch.items()}

  def _global_batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, _SPLITS[self.split], step])
    b, seq_len = self.global_batch_size, self.seq_len
    half = rng.integers(max(1, seq_len // 4), seq_len // 2 + 1, size=b)
    payload = rng.integers(NUM_SPECIAL, self.vocab_size, size=(b, seq_len))
    pos_L = np.arange(seq_len)
    length_B1 = 2 * half[:, None]
    real_BL = pos_L[None, :] < length_B1
    # Position i of the second half repeats position i - n of the first.
    source_BL = np.where(pos_L[None, :] < half[:, None], pos_L[None, :],
                         pos_L[None, :] - half[:, None])
    seq_BL = np.take_along_axis(payload, source_BL, axis=1)
    seq_BL = np.where(real_BL, seq_BL, PAD).astype(np.int32)
    if self.causal:
      inputs_BL = np.concatenate(
          [np.full((b, 1), BOS, np.int32), seq_BL[:, :-1]], axis=1)
      key_mask_BL = pos_L[None, :] < length_B1  # BOS + first 2n-1 tokens
      weights_BL = real_BL & (pos_L[None, :] >= half[:, None])
    else:
      masked_BL = real_BL & (rng.random((b, seq_len)) < self.mask_rate)
      inputs_BL = np.where(masked_BL, MASK, seq_BL).astype(np.int32)
      key_mask_BL = real_BL
      weights_BL = masked_BL
    return {"inputs": inputs_BL.astype(np.int32),
            "targets": seq_BL,
            "weights": weights_BL.astype(np.float32),
            "key_mask": key_mask_BL}


@dataclasses.dataclass(frozen=True)
class CopyData(sections.DataConfig):
  """`config.data` of the copy task.

  vocab_size: token ids (3 are special), > 3.
  variant: "causal" (decoder) or "mlm" (encoder).
  mask_rate: the masked fraction of real tokens (mlm).
  num_eval_batches: eval batches per evaluation (the source is synthetic).
  """
  vocab_size: int = 16
  variant: str = "causal"
  mask_rate: float = 0.15
  num_eval_batches: int = 4

  def check(self) -> None:
    super().check()
    if self.seq_len < 2:
      self._fail("seq_len", "an integer >= 2")
    self._int("vocab_size", NUM_SPECIAL + 1)
    self._choice("variant", ("causal", "mlm"))
    self._number("mask_rate", 0.0, 1.0, low_open=True, high_open=False)
    self._int("num_eval_batches", 0)


def variant_data(variant: str) -> CopyData:
  """smoke: 16 tokens; cpu: 64 (2000 steps learn it); paper: 512, the SLiM
  paper's copy task."""
  base.check_variant(variant, "copy")
  seq_len, batch_size, num_eval_batches = {
      "smoke": (16, 8, 2), "cpu": (64, 32, 4), "paper": (512, 32, 8)
  }[variant]
  return CopyData(seq_len=seq_len, batch_size=batch_size,
                  num_eval_batches=num_eval_batches)


def build(data: CopyData, *, process_index: int = 0,
          process_count: int = 1) -> base.TaskData:
  """Builds the copy task from its data section."""
  sampling.local_rows(data.batch_size, process_index, process_count)
  causal = data.variant == "causal"
  common = dict(global_batch_size=data.batch_size, seq_len=data.seq_len,
                vocab_size=data.vocab_size, causal=causal,
                mask_rate=data.mask_rate, seed=data.seed,
                process_index=process_index, process_count=process_count)
  return base.TaskData(
      train=CopySource(split="train", **common),
      eval=CopySource(split="eval", eval_batches=data.num_eval_batches,
                      **common),
      vocab_size=data.vocab_size, causal=causal, loss_unit="token",
      unigram_bits=math.log2(data.vocab_size - NUM_SPECIAL))


def io(data: CopyData) -> base.TaskIO:
  """Tokens are written as their ids (space-separated)."""
  causal = data.variant == "causal"
  encode = lambda text: np.asarray([int(t) for t in text.split()], np.int32)
  decode = lambda ids: " ".join(str(int(i)) for i in ids)
  return base.TaskIO(vocab_size=data.vocab_size, causal=causal,
                     loss_unit="token", encode=encode, decode=decode,
                     bos=BOS if causal else None,
                     mask=None if causal else MASK,
                     special=(PAD, BOS, MASK))


TASK = base.Task("copy", CopyData, variant_data, build, io)
