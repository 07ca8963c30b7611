"""Deterministic, index-based batch sampling shared by all tasks.

Row r of global batch `step` is a pure function of (seed, step, r): its
example comes from a per-epoch permutation of (seed, epoch) and its
randomness (crop offset, masking) from a generator seeded by
(seed, stream, step, r). So process p of P builds only rows
[p*b, (p+1)*b) with b = global_batch_size // P, and the processes' slices
concatenated are exactly the single-process global batch.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

# Independent random streams for one seed.
STREAM_EPOCH = 0
STREAM_TRAIN_ROW = 1
STREAM_EVAL_ROW = 2
# Eval batches do not depend on the training seed, so runs with different
# seeds are scored on the same masked positions / windows.
EVAL_SEED = 0


def local_rows(global_batch_size: int, process_index: int,
               process_count: int) -> range:
  """The global-batch rows [p*b, (p+1)*b) this process builds."""
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got "
                     f"{process_index}")
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} (global) is not "
                     f"divisible by process_count {process_count}")
  b = global_batch_size // process_count
  return range(process_index * b, (process_index + 1) * b)


def row_rng(seed: int, stream: int, step: int, row: int) -> np.random.Generator:
  """The random generator of one row of one global batch."""
  return np.random.default_rng([seed, stream, step, row])


class EpochOrder:
  """A fresh permutation of `n` examples for every epoch, seeded by seed.

  `index(position)` maps the global example counter (step * B + row) to an
  example: epoch = position // n, then that epoch's permutation, computed
  index by index with grain's `index_shuffle` (a Feistel-style cipher): a
  pure function of (seed, epoch, position) that never materializes the
  permutation, so memory does not grow with n (250M TrEMBL sequences cost
  nothing).
  """

  def __init__(self, n: int, seed: int):
    if n < 1:
      raise ValueError("cannot sample from an empty dataset")
    self.n = n
    self.seed = seed

  @functools.lru_cache(maxsize=4)
  def _epoch_seed(self, epoch: int) -> int:
    return int(np.random.SeedSequence([self.seed, STREAM_EPOCH, epoch])
               .generate_state(1)[0] & 0x7FFFFFFF)

  def index(self, position: int) -> int:
    epoch, pos = divmod(int(position), self.n)
    if self.n == 1:
      return 0
    return int(grain.experimental.index_shuffle(
        pos, max_index=self.n - 1, seed=self._epoch_seed(epoch), rounds=8))


def entropy_bits(counts: np.ndarray) -> float:
  """Entropy in bits of the distribution proportional to `counts`."""
  counts = np.asarray(counts, dtype=np.float64)
  total = counts.sum()
  if total <= 0:
    raise ValueError("entropy of an empty histogram")
  p = counts[counts > 0] / total
  return float(-(p * np.log2(p)).sum())


def fill_causal_row(row: dict[str, np.ndarray], x: np.ndarray,
                    start: int) -> None:
  """Writes one next-token-prediction row from the token stream `x`.

  inputs[i] = x[start + i] and targets[i] = x[start + i + 1] for the
  n = min(L, len(x) - 1 - start) positions that exist; the rest stays padding
  (token 0, weight 0, key_mask False).

  Args:
    row: views "inputs", "targets", "weights", "key_mask", each [L], already
      zero / False.
    x: int tokens [T] (e.g. [BOS, s_0, ..., s_{n-1}, EOS]).
    start: first input position, 0 <= start < len(x) - 1.
  """
  seq_len = row["inputs"].shape[0]
  n = min(seq_len, x.shape[0] - 1 - start)
  if n < 1:
    raise ValueError(f"window start {start} leaves no target in a stream of "
                     f"{x.shape[0]} tokens")
  row["inputs"][:n] = x[start:start + n]
  row["targets"][:n] = x[start + 1:start + n + 1]
  row["weights"][:n] = 1.0
  row["key_mask"][:n] = True


class RowSource:
  """A BatchSource whose global-batch rows are built independently.

  Subclasses implement `fill_row(step, row, out)`, writing global row `row`
  of batch `step` into `out` (dict of [L] views, pre-filled with padding).
  """

  def __init__(self, *, global_batch_size: int, seq_len: int,
               process_index: int, process_count: int,
               num_batches: int | None = None):
    self.global_batch_size = global_batch_size
    self.seq_len = seq_len
    self.rows = local_rows(global_batch_size, process_index, process_count)
    self._num_batches = num_batches

  @property
  def num_batches(self) -> int | None:
    return self._num_batches

  @property
  def local_batch_size(self) -> int:
    return len(self.rows)

  def get_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step` (see base.py for keys)."""
    step = int(step)
    if step < 0 or (self._num_batches is not None
                    and step >= self._num_batches):
      raise ValueError(f"batch step {step} out of range [0, "
                       f"{self._num_batches or 'inf'})")
    shape = (len(self.rows), self.seq_len)
    batch = {"inputs": np.zeros(shape, np.int32),
             "targets": np.zeros(shape, np.int32),
             "weights": np.zeros(shape, np.float32),
             "key_mask": np.zeros(shape, np.bool_)}
    for j, row in enumerate(self.rows):
      self.fill_row(step, row, {k: v[j] for k, v in batch.items()})
    return batch

  def fill_row(self, step: int, row: int, out: dict[str, np.ndarray]) -> None:
    raise NotImplementedError


def eval_num_batches(num_examples: int, global_batch_size: int,
                     requested: int, *, wrap: bool) -> int:
  """How many eval batches to run; raises ValueError naming num_eval_batches.

  Args:
    num_examples: examples (or windows) in the eval split.
    global_batch_size: rows per batch.
    requested: the config's num_eval_batches; 0 means one full pass.
    wrap: whether the last batch may wrap around to the first examples
      (sequence sets: yes; fixed text windows: no, the tail is dropped).
  """
  if wrap:
    available = -(-num_examples // global_batch_size)
  else:
    available = num_examples // global_batch_size
  if available < 1:
    raise ValueError(f"the eval split has {num_examples} examples, fewer than "
                     f"one batch of {global_batch_size}; lower batch_size or "
                     "seq_len")
  if requested < 0:
    raise ValueError(f"num_eval_batches must be >= 0 (0 = full pass), got "
                     f"{requested}")
  if requested > available:
    raise ValueError(f"num_eval_batches={requested} exceeds the {available} "
                     "batches of the eval split; use 0 for a full pass")
  return requested or available
