"""Protein tasks: masked LM (`protein_mlm`) and causal LM (`protein_lm`).

Vocabulary (29): 0 PAD, 1 MASK, 2 BOS, 3 EOS, then ACDEFGHIKLMNPQRSTVWY, BZXUO.
protein_mlm: a row is one sequence's residues, cropped to L (train: at
random; eval: the first L) or padded; 15% of real positions are selected
(80% become MASK, 10% a random standard amino acid, 10% stay), weights 1
exactly there. protein_lm: inputs = x[o:o+L], targets = x[o+1:o+L+1] of
x = [BOS, s_0..s_{n-1}, EOS], o uniform in [0, n+1-L] (train, 0 when it
fits) or 0 (eval); past the stream PAD, weight 0, key_mask False. Data:
prepared datasets (defaults: docs/training.md).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from performer_jax.data import dataset as prepared
from performer_jax.data import defaults
from performer_jax.data import fasta
from performer_jax.data import prepare
from performer_jax.schemas import sections
from performer_jax.tasks import base
from performer_jax.tasks import masking
from performer_jax.tasks import sampling

PAD, MASK, BOS, EOS = 0, 1, 2, 3
FIRST_AMINO_ACID = 4
VOCAB_SIZE = FIRST_AMINO_ACID + len(fasta.AMINO_ACIDS)
NUM_STANDARD = len(fasta.STANDARD_AMINO_ACIDS)
HELDOUT = "heldout"  # data.eval_path: the train dataset's held-out split
log = logging.getLogger("performer_jax.train")

_LUT = np.full(256, 255, np.uint8)
for _i, _c in enumerate(fasta.AMINO_ACIDS):
  _LUT[ord(_c)] = FIRST_AMINO_ACID + _i


def encode(sequence: str) -> np.ndarray:
  """Amino-acid letters (any case) -> int32 token ids; one trailing '*'
  (stop marker) is dropped, as `performer-data prepare` does (fasta.py)."""
  data = sequence.strip().upper().removesuffix("*").encode(
      "ascii", errors="replace")
  ids = _LUT[np.frombuffer(data, np.uint8)]
  if (ids == 255).any():
    bad = chr(data[int(np.flatnonzero(ids == 255)[0])])
    raise ValueError(f"sequence has the character {bad!r}, which is not an "
                     f"amino acid of the vocabulary {fasta.AMINO_ACIDS}")
  return ids.astype(np.int32)


def decode(ids: np.ndarray) -> str:
  """Token ids -> letters; specials as '.', '#', '<', '>'."""
  table = ".#<>" + fasta.AMINO_ACIDS
  return "".join(table[int(i)] for i in ids)


def open_proteins(spec: str, default, *, skip_invalid: bool,
                  exclude: tuple[str, ...] = ()) -> prepared.Sequences:
  """The "train" split of a prepared protein dataset: `spec` is a prepared
  directory (used as it is), or FASTA file(s) prepared once into the cache
  without the exact sequences of `exclude` ("" = the embedded default
  `default()`). An invalid or empty record of a user's file fails, as in
  `performer-data prepare`, unless `skip_invalid` (then skipped and
  counted); the embedded defaults are prepared as they always were, with
  the few such records skipped."""
  if spec:
    provider = defaults.USER_FILE_PROVIDER
  else:
    spec, provider = str(default()), defaults.PROTEIN_PROVIDER
    skip_invalid = True
  try:
    root = prepare.ensure_prepared(spec, "fasta", provider=provider,
                                   skip_invalid=skip_invalid,
                                   exclude=exclude)
  except ValueError as e:  # the trainer's switch is a config key
    raise ValueError(str(e).replace(
        "pass --skip-invalid", "set --config.data.skip_invalid=true")
                     ) from None
  sequences = prepared.Sequences(root, "train")
  skipped = sequences.manifest.get("skipped_invalid", 0)
  if skipped and provider == defaults.USER_FILE_PROVIDER:
    log.warning("%s: skipped %d invalid or empty records "
                "(data.skip_invalid)", spec, skipped)
  return sequences


class _ProteinSource(sampling.RowSource):
  """Rows from prepared sequences: shuffled per epoch (train) or in order
  (eval). Each process reads only the records of its own rows."""

  def __init__(self, proteins: prepared.Sequences, *, seed: int, train: bool,
               **kwargs):
    super().__init__(**kwargs)
    self.proteins = proteins
    self.train = train
    self.seed = seed if train else sampling.EVAL_SEED
    self.order = sampling.EpochOrder(len(proteins), seed)

  def _pick(self, step: int, row: int) -> tuple[np.ndarray,
                                                 np.random.Generator]:
    position = step * self.global_batch_size + row
    if self.train:
      index = self.order.index(position)
      stream = sampling.STREAM_TRAIN_ROW
    else:
      index = position % len(self.proteins)
      stream = sampling.STREAM_EVAL_ROW
    rng = sampling.row_rng(self.seed, stream, step, row)
    return _LUT[self.proteins[index]], rng


class MlmSource(_ProteinSource):
  """Masked-LM rows (see the module docstring)."""

  def __init__(self, proteins: prepared.Sequences, *, mask_rate: float,
               **kwargs):
    super().__init__(proteins, **kwargs)
    self.mask_rate = mask_rate

  def fill_row(self, step, row, out):
    seq, rng = self._pick(step, row)
    excess = seq.shape[0] - self.seq_len
    start = int(rng.integers(0, excess + 1)) if self.train and excess > 0 else 0
    window = seq[start:start + self.seq_len]
    n = window.shape[0]
    inputs, selected = masking.bert_mask(
        window, rng, mask_rate=self.mask_rate, mask_id=MASK,
        random_low=FIRST_AMINO_ACID,
        random_high=FIRST_AMINO_ACID + NUM_STANDARD)
    out["inputs"][:n] = inputs
    out["targets"][:n] = window
    out["weights"][:n] = selected
    out["key_mask"][:n] = True


class LmSource(_ProteinSource):
  """Causal-LM rows (see the module docstring)."""

  def fill_row(self, step, row, out):
    seq, rng = self._pick(step, row)
    stream = np.concatenate([[BOS], seq, [EOS]])
    excess = stream.shape[0] - (self.seq_len + 1)
    start = int(rng.integers(0, excess + 1)) if self.train and excess > 0 else 0
    sampling.fill_causal_row(out, stream, start)


@dataclasses.dataclass(frozen=True)
class ProteinLMData(sections.DataConfig):
  """`config.data` of protein_lm (and, with mask_rate, protein_mlm).

  train_path: a prepared dataset directory (`performer-data prepare
    --format fasta|blastdb`, used as it is: pass `--exclude EVAL` there), or
    FASTA file(s) (gzipped or not, a glob), prepared once into the cache
    without the exact sequences of the eval set; "" = the embedded default
    (mmseqs2-examples DB, 20,000 sequences, 19,862 without the eval ones).
  eval_path: the same, or "heldout" for the held-out split of the train
    dataset (prepared with --heldout-fraction); "" = the embedded 500
    QUERY sequences.
  num_eval_batches: 0 = one full pass over the eval sequences.
  skip_invalid: an invalid or empty record of a FASTA file given by path
    fails naming it (as `performer-data prepare` does) unless this is True:
    then such records are skipped, and their count logged.
  """
  train_path: str = ""
  eval_path: str = ""
  num_eval_batches: int = 0
  skip_invalid: bool = False

  def check(self) -> None:
    super().check()
    self._str("train_path")
    self._str("eval_path")
    self._int("num_eval_batches", 0)
    self._bool("skip_invalid")


@dataclasses.dataclass(frozen=True)
class ProteinMLMData(ProteinLMData):
  """`config.data` of protein_mlm: mask_rate of the residues are selected
  (80% MASK, 10% random amino acid, 10% kept)."""
  mask_rate: float = 0.15

  def check(self) -> None:
    super().check()
    self._number("mask_rate", 0.0, 1.0, low_open=True)


_SIZES = {"smoke": (64, 8, 2), "cpu": (256, 16, 8), "paper": (1024, 32, 0)}


def _variant_data(schema, task: str):
  def variant_data(variant: str):
    base.check_variant(variant, task)
    seq_len, batch_size, num_eval_batches = _SIZES[variant]
    return schema(seq_len=seq_len, batch_size=batch_size,
                  num_eval_batches=num_eval_batches)
  return variant_data


def build(data: ProteinLMData, *, process_index: int = 0,
          process_count: int = 1) -> base.TaskData:
  """Builds protein_mlm (for ProteinMLMData) or protein_lm."""
  masked = isinstance(data, ProteinMLMData)
  sampling.local_rows(data.batch_size, process_index, process_count)
  eval_spec = data.eval_path or str(defaults.protein_eval())
  # Exact copies of eval sequences leave raw train files (the embedded
  # DB holds 138 of the 500 QUERY sequences).
  train = open_proteins(data.train_path, defaults.protein_train,
                        skip_invalid=data.skip_invalid,
                        exclude=() if data.eval_path == HELDOUT
                        else (eval_spec,))
  if data.eval_path == HELDOUT:
    evals = prepared.Sequences(train.root, "heldout")
  else:
    evals = open_proteins(data.eval_path, defaults.protein_eval,
                          skip_invalid=data.skip_invalid)
  if process_index == 0:
    _log_eval_set(data, len(evals))
  common = dict(global_batch_size=data.batch_size, seq_len=data.seq_len,
                process_index=process_index, process_count=process_count,
                seed=data.seed)
  letters = prepared.unigram_counts(train.manifest, "train")
  counts = np.bincount(_LUT, weights=letters, minlength=256)[:VOCAB_SIZE]
  if masked:
    cls, extra = MlmSource, dict(mask_rate=data.mask_rate)
  else:
    cls, extra = LmSource, {}
    counts[EOS] += len(train)
  num_eval = sampling.eval_num_batches(len(evals), data.batch_size,
                                       data.num_eval_batches, wrap=True)
  return base.TaskData(
      train=cls(train, train=True, **common, **extra),
      eval=cls(evals, train=False, num_batches=num_eval, **common, **extra),
      vocab_size=VOCAB_SIZE, causal=not masked, loss_unit="token",
      unigram_bits=sampling.entropy_bits(counts))


def _log_eval_set(data: ProteinLMData, count: int) -> None:
  """Says which sequences evaluation uses; warns when they are the built-in
  UniProt set while training on one's own data."""
  if data.eval_path == HELDOUT:
    what = f"the held-out split of {data.train_path or 'the default data'}"
  elif data.eval_path:
    what = data.eval_path
  else:
    what = "the built-in UniProt eval set (mmseqs2-examples QUERY)"
  log.info("eval set: %s (%d sequences)", what, count)
  if data.train_path and not data.eval_path:
    log.warning("training on %s but evaluating on the built-in UniProt "
                "eval set; set --config.data.eval_path to your own eval "
                "file, or to 'heldout' for a held-out split of a dataset "
                "prepared with --heldout-fraction", data.train_path)


def io(data: ProteinLMData) -> base.TaskIO:
  masked = isinstance(data, ProteinMLMData)
  return base.TaskIO(vocab_size=VOCAB_SIZE, causal=not masked,
                     loss_unit="token", encode=encode, decode=decode,
                     bos=None if masked else BOS, eos=None if masked else EOS,
                     mask=MASK if masked else None,
                     special=(PAD, MASK, BOS, EOS), fasta=True)


MLM = base.Task("protein_mlm", ProteinMLMData,
                _variant_data(ProteinMLMData, "protein_mlm"), build, io)
LM = base.Task("protein_lm", ProteinLMData,
               _variant_data(ProteinLMData, "protein_lm"), build, io)
