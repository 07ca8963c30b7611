"""A copy task that needs no data files (smoke tests and debugging).

Each example holds n random tokens followed by the same n tokens again
(n uniform in [seq_len // 4, seq_len // 2]); the rest of the row is padding.
  causal: inputs = [BOS, s_0 .. s_{L-2}], targets = s; weights are 1 on the
          copied half only (the first half is unpredictable noise).
  mlm:    inputs = s with a random `mask_rate` fraction of its real tokens
          replaced by MASK, targets = s, weights 1 on the masked positions.
Token ids: 0 = PAD, 1 = BOS, 2 = MASK, 3..vocab_size-1 = payload.

Batches are a pure function of (seed, split, step): every process generates
the same global batch and keeps its own rows, so the global batch does not
depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from performer_jax.tasks import base

PAD, BOS, MASK = 0, 1, 2
NUM_SPECIAL = 3
_KEYS = ("batch_size", "seq_len", "seed", "vocab_size", "variant",
         "mask_rate", "num_eval_batches")
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


def make_copy_task(data_config, *, process_index: int = 0,
                   process_count: int = 1) -> base.TaskData:
  """Builds the copy task from `config.data` (keys: see `_KEYS`)."""
  unknown = sorted(set(data_config.keys()) - set(_KEYS))
  if unknown:
    raise ValueError(f"unknown key(s) {unknown} in config.data for task "
                     f"'copy'; allowed keys are {list(_KEYS)}")
  cfg = {k: data_config[k] for k in _KEYS if k in data_config}
  vocab_size = cfg.get("vocab_size", 16)
  variant = cfg.get("variant", "causal")
  if variant not in ("causal", "mlm"):
    raise ValueError(f"config.data.variant must be 'causal' or 'mlm', got "
                     f"{variant!r}")
  if vocab_size <= NUM_SPECIAL:
    raise ValueError(f"config.data.vocab_size must be > {NUM_SPECIAL}, got "
                     f"{vocab_size}")
  if cfg["seq_len"] < 2:
    raise ValueError(f"config.data.seq_len must be >= 2, got {cfg['seq_len']}")
  if cfg["batch_size"] % process_count:
    raise ValueError(f"config.data.batch_size ({cfg['batch_size']}) must be "
                     f"divisible by the process count ({process_count})")
  mask_rate = cfg.get("mask_rate", 0.15)
  if not 0.0 < mask_rate <= 1.0:
    raise ValueError(f"config.data.mask_rate must be in (0, 1], got "
                     f"{mask_rate}")
  common = dict(global_batch_size=cfg["batch_size"], seq_len=cfg["seq_len"],
                vocab_size=vocab_size, causal=variant == "causal",
                mask_rate=mask_rate, seed=cfg.get("seed", 0),
                process_index=process_index, process_count=process_count)
  payload = vocab_size - NUM_SPECIAL
  return base.TaskData(
      train=CopySource(split="train", **common),
      eval=CopySource(split="eval", eval_batches=cfg.get("num_eval_batches", 4),
                      **common),
      vocab_size=vocab_size,
      causal=variant == "causal",
      loss_unit="token",
      unigram_bits=math.log2(payload))
