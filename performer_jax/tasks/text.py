"""Byte-level causal language modelling (`text_lm`), loss unit "byte".

Vocabulary: the 256 byte values, no special token: rows are full windows of
real bytes (no padding) starting mid-stream, where a BOS would mean nothing.
A row is a window w of L+1 bytes: inputs = w[:L], targets = w[1:]. Train
windows start at random in the train split (seeded by (seed, step, row));
eval batch i row r starts at byte (i*B + r) * L of `data.eval_split`, the
tail that does not fill a batch dropped. `data.source`, a prepared dataset
or a file prepared once: "wiki_sample" (the gensim Wikipedia XML sample,
default), "enwik8" (or enwik8.zip) or "file" (any file) at `data.path`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from performer_jax.data import dataset as prepared
from performer_jax.data import defaults
from performer_jax.data import files
from performer_jax.data import prepare
from performer_jax.data import shards
from performer_jax.schemas import sections
from performer_jax.tasks import base
from performer_jax.tasks import sampling

VOCAB_SIZE = 256
SOURCES = ("wiki_sample", "enwik8", "file")
ENWIK8_PROVIDER = ("you: download enwik8.zip (the Hutter Prize file, 10^8 "
                   "bytes) and set data.path to it (zipped or unzipped)")


class TrainWindows(sampling.RowSource):
  """Endless random windows of L+1 bytes of a prepared split (each read from
  disk: memory does not grow with the corpus)."""

  def __init__(self, data: prepared.Sequences, *, seed: int, **kwargs):
    super().__init__(**kwargs)
    self.data = data
    self.seed = seed
    self.max_start = data.num_tokens - (self.seq_len + 1)
    if self.max_start < 0:
      raise ValueError(f"the train split has {data.num_tokens} bytes, fewer "
                       f"than seq_len + 1 = {self.seq_len + 1}")

  def fill_row(self, step, row, out):
    rng = sampling.row_rng(self.seed, sampling.STREAM_TRAIN_ROW, step, row)
    start = int(rng.integers(0, self.max_start + 1))
    sampling.fill_causal_row(out, self.data.window(start, self.seq_len + 1),
                             0)


class EvalWindows(sampling.RowSource):
  """Consecutive fixed windows of the eval split."""

  def __init__(self, data: prepared.Sequences, **kwargs):
    super().__init__(**kwargs)
    self.data = data

  def fill_row(self, step, row, out):
    start = (step * self.global_batch_size + row) * self.seq_len
    size = min(self.seq_len + 1, self.data.num_tokens - start)
    sampling.fill_causal_row(out, self.data.window(start, size), 0)


@dataclasses.dataclass(frozen=True)
class TextData(sections.DataConfig):
  """`config.data` of text_lm.

  source: "wiki_sample", "enwik8" or "file" (see the module docstring).
  path: the corpus ("" = the embedded sample for "wiki_sample").
  eval_split: "valid" or "test".
  num_eval_batches: 0 = every whole eval batch.
  """
  source: str = "wiki_sample"
  path: str = ""
  eval_split: str = "valid"
  num_eval_batches: int = 0

  def check(self) -> None:
    super().check()
    self._choice("source", SOURCES)
    self._str("path")
    self._choice("eval_split", ("valid", "test"))
    self._int("num_eval_batches", 0)


def variant_data(variant: str) -> TextData:
  """The data section of a variant. "paper" reads enwik8 from
  $PERFORMER_DATA_DIR/enwik8 (not shipped: put it there or set data.path)."""
  base.check_variant(variant, "text_lm")
  seq_len, batch_size, num_eval_batches = {
      "smoke": (64, 8, 2), "cpu": (256, 16, 8), "paper": (1024, 32, 0)
  }[variant]
  if variant == "paper":
    return TextData(source="enwik8", path=str(files.data_dir() / "enwik8"),
                    seq_len=seq_len, batch_size=batch_size,
                    num_eval_batches=num_eval_batches)
  return TextData(seq_len=seq_len, batch_size=batch_size,
                  num_eval_batches=num_eval_batches)


def open_corpus(source: str, path: str) -> str:
  """The prepared dataset (train/valid/test splits) of `source`."""
  if source == "wiki_sample":
    spec, provider = path or str(defaults.wiki_sample()), (
        defaults.WIKI_SAMPLE_PROVIDER)
  elif not path:
    raise ValueError(f"data.path must name a file or prepared dataset for "
                     f"source={source!r}")
  else:
    spec = path
    provider = ENWIK8_PROVIDER if source == "enwik8" else (
        defaults.USER_FILE_PROVIDER)
  root = prepare.ensure_prepared(spec, "text", provider=provider)
  total = sum(e["tokens"] for e in prepared.read_manifest(root)[
      "splits"].values())
  if source == "enwik8" and total != shards.ENWIK8_BYTES:
    raise ValueError(f"{path}: has {total} bytes, enwik8 has exactly "
                     f"{shards.ENWIK8_BYTES}; for another corpus use "
                     "source='file' (fraction split)")
  return root


def build(data: TextData, *, process_index: int = 0,
          process_count: int = 1) -> base.TaskData:
  """Builds text_lm from its data section."""
  sampling.local_rows(data.batch_size, process_index, process_count)
  root = open_corpus(data.source, data.path)
  train = prepared.Sequences(root, "train")
  eval_data = prepared.Sequences(root, data.eval_split)
  num_windows = max(0, (eval_data.num_tokens - 1) // data.seq_len)
  num_eval = sampling.eval_num_batches(num_windows, data.batch_size,
                                       data.num_eval_batches, wrap=False)
  common = dict(global_batch_size=data.batch_size, seq_len=data.seq_len,
                process_index=process_index, process_count=process_count)
  counts = prepared.unigram_counts(train.manifest, "train")
  return base.TaskData(
      train=TrainWindows(train, seed=data.seed, **common),
      eval=EvalWindows(eval_data, num_batches=num_eval, **common),
      vocab_size=VOCAB_SIZE, causal=True, loss_unit="byte",
      unigram_bits=sampling.entropy_bits(counts))


def encode(text: str) -> np.ndarray:
  """Text -> its UTF-8 bytes as int32 token ids."""
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(ids: np.ndarray) -> str:
  """Token ids -> text (invalid UTF-8 shown as U+FFFD)."""
  return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8",
                                                          errors="replace")


def io(data: TextData) -> base.TaskIO:
  del data
  return base.TaskIO(vocab_size=VOCAB_SIZE, causal=True, loss_unit="byte",
                     encode=encode, decode=decode)


TASK = base.Task("text_lm", TextData, variant_data, build, io)
