"""The contract between tasks (data) and the trainer.

A task turns its config into a `TaskData`: train and eval sources, the
vocabulary, causality and how to report the loss. `get_batch(step)` is a
pure function of (seed, step, process): resuming needs only the step, and
each process builds its own rows. A batch is a dict of numpy arrays,
b = global_batch_size // process_count:
  inputs, targets: int32 [b, L]  token ids fed in; ids to predict
  weights:  float32 [b, L]  loss weight (0 on padding; MLM: masked only)
  key_mask: bool    [b, L]  True at real tokens
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import numpy as np

from performer_jax.schemas import sections

BATCH_KEYS = ("inputs", "targets", "weights", "key_mask")
# Every task's sizes: "smoke" (seconds; the tests), "cpu" (a demo that learns
# visibly on a 2-core CPU), "paper" (the paper's sizes, for GPU/TPU).
VARIANTS = ("smoke", "cpu", "paper")


class BatchSource(Protocol):
  """Random-access batches for one process."""

  global_batch_size: int
  seq_len: int

  def get_batch(self, step: int) -> dict[str, np.ndarray]:
    """Returns this process's slice of global batch number `step`."""
    ...

  @property
  def num_batches(self) -> int | None:
    """Batches in one pass (eval sources), or None for an endless source."""
    ...


@dataclasses.dataclass(frozen=True)
class TaskData:
  """What a task hands to the trainer.

  Attributes:
    train: endless source of training batches.
    eval: finite source; the trainer evaluates on batches 0..num_batches-1.
    vocab_size: size of the model's input and output vocabulary.
    causal: True for autoregressive tasks (decoder), False for masked LM.
    loss_unit: how to name per-token bits in metrics: "token", "byte" or "dim".
    unigram_bits: entropy in bits per predicted token of the training
      unigram distribution: the baseline every model must beat.
  """

  train: BatchSource
  eval: BatchSource
  vocab_size: int
  causal: bool
  loss_unit: str = "token"
  unigram_bits: float | None = None


@dataclasses.dataclass(frozen=True)
class TaskIO:
  """What a trained model of a task reads and writes, known without any
  data (for loading, generating and scoring).

  Attributes:
    vocab_size: token ids the model reads and predicts.
    causal: decoder-only (causal LM) if True, else masked LM.
    loss_unit: "token", "byte" or "dim", for bits per unit.
    encode: user text (a protein sequence, text bytes) -> int32 token ids,
      without the start token; raises ValueError naming a character that
      is not in the vocabulary.
    decode: token ids -> text (special tokens shown as symbols).
    bos: the token a sequence starts from (None: none, e.g. bytes).
    eos: the token that ends a sequence (None: none).
    mask: the mask token of a masked LM (None for causal tasks).
    special: ids that are never part of a sequence's content.
    fasta: sequences are written as FASTA records (proteins).
    image_shape: `(H, W, C)` of the images a pixel model streams, else None.
  """

  vocab_size: int
  causal: bool
  loss_unit: str
  encode: Callable[[str], np.ndarray]
  decode: Callable[[np.ndarray], str]
  bos: int | None = None
  eos: int | None = None
  mask: int | None = None
  special: tuple[int, ...] = ()
  fasta: bool = False
  image_shape: tuple[int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  """How the trainer finds a task: every task is registered as one of these.

  Attributes:
    name: the `config.task` value.
    data: the schema of the task's `config.data` section.
    variant_data: variant name ("smoke", "cpu", "paper") -> the data section
      of that variant.
    build: `build(data, *, process_index, process_count) -> TaskData`, the
      process's view of the task.
    io: `io(data) -> TaskIO`: the vocabulary and tokenization, without
      loading data.
  """

  name: str
  data: type[sections.DataConfig]
  variant_data: Callable[[str], sections.DataConfig]
  build: Callable[..., TaskData]
  io: Callable[[sections.DataConfig], TaskIO]


def check_variant(variant: str, task: str) -> str:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} for task {task!r}; choose "
                     f"from {list(VARIANTS)}")
  return variant


def check_batch(batch: dict[str, np.ndarray], batch_size: int,
                seq_len: int) -> None:
  """Raises ValueError naming the key when a batch breaks the contract."""
  expected = {"inputs": np.int32, "targets": np.int32,
              "weights": np.float32, "key_mask": np.bool_}
  for key, dtype in expected.items():
    if key not in batch:
      raise ValueError(f"batch is missing key {key!r}; it has {sorted(batch)}")
    arr = batch[key]
    if arr.shape != (batch_size, seq_len):
      raise ValueError(f"batch[{key!r}] has shape {arr.shape}, expected "
                       f"{(batch_size, seq_len)}")
    if arr.dtype != dtype:
      raise ValueError(f"batch[{key!r}] has dtype {arr.dtype}, expected "
                       f"{np.dtype(dtype)}")


def check_batch_values(batch: dict[str, np.ndarray], vocab_size: int) -> None:
  """Raises ValueError when token ids or weights break the contract.

  Token ids must lie in [0, vocab_size); weights must be finite, >= 0 and 0
  wherever key_mask is False (padding is never a target).
  """
  for key in ("inputs", "targets"):
    arr = batch[key]
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
      raise ValueError(f"batch[{key!r}] has ids in [{arr.min()}, {arr.max()}]"
                       f", outside the vocabulary [0, {vocab_size})")
  weights = batch["weights"]
  if not np.isfinite(weights).all() or (weights < 0).any():
    raise ValueError("batch['weights'] must be finite and >= 0")
  if weights[~batch["key_mask"]].any():
    raise ValueError("batch['weights'] is non-zero on padding (key_mask "
                     "False)")
