"""Sentence embeddings of converted BERT encoders (`sentence_embedding`).

The task of models from `performer-convert` (convert/bert.py): a
bidirectional encoder over the `tokenizers` tokenization of
`data.tokenizer`, a tokenizer.json held in the config itself, so a workdir
or exported model needs no other file. `encode` returns the whole model
input with special tokens (`[CLS] ... [SEP]`), unpadded and untruncated;
`bos` is None. `performer-score --embeddings` mean-pools the final hidden
states over these tokens. performer-train has no data for it (`build`
refuses); experiments/minilm fine-tunes converted models directly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from performer_jax.schemas import sections
from performer_jax.tasks import base

NAME = "sentence_embedding"


@dataclasses.dataclass(frozen=True)
class SentenceData(sections.DataConfig):
  """`config.data` of sentence_embedding.

  tokenizer: the content of a `tokenizers` tokenizer.json ("" until a
    converter fills it in); seq_len: the longest input scored in one window.
  """
  tokenizer: str = ""

  def check(self) -> None:
    super().check()
    self._str("tokenizer")


def variant_data(variant: str) -> SentenceData:
  base.check_variant(variant, NAME)
  seq_len, batch_size = {"smoke": (32, 8), "cpu": (128, 32),
                         "paper": (256, 32)}[variant]
  return SentenceData(seq_len=seq_len, batch_size=batch_size)


@functools.lru_cache(maxsize=4)
def tokenizer(spec: str) -> Any:
  """The `tokenizers.Tokenizer` of a tokenizer.json text, without the
  padding and truncation it may carry (windows handle long inputs)."""
  if not spec:
    raise ValueError("config.data.tokenizer is empty: sentence_embedding "
                     "models come from performer-convert, which stores the "
                     "checkpoint's tokenizer.json there")
  try:
    # pylint: disable-next=g-import-not-at-top
    import tokenizers
  except ImportError as e:
    raise ImportError("sentence_embedding needs the tokenizers package: pip "
                      "install 'performer-jax[pretrained]'") from e
  try:
    tok = tokenizers.Tokenizer.from_str(spec)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError("config.data.tokenizer is not a valid tokenizer.json: "
                     f"{str(e)[:200]}") from e
  tok.no_padding()
  tok.no_truncation()
  return tok


def build(data: SentenceData, *, process_index: int = 0,
          process_count: int = 1) -> base.TaskData:
  del data, process_index, process_count
  raise ValueError(f"task {NAME} holds converted pretrained models and has "
                   "no training data for performer-train; fine-tune them as "
                   "experiments/minilm/distill.py does")


def io(data: SentenceData) -> base.TaskIO:
  tok = tokenizer(data.tokenizer)
  vocab = tok.get_vocab(with_added_tokens=True)
  special = tuple(sorted(i for i, t in tok.get_added_tokens_decoder().items()
                        if t.special))
  encode = lambda text: np.asarray(tok.encode(text).ids, np.int32)
  decode = lambda ids: tok.decode([int(i) for i in ids],
                                  skip_special_tokens=False)
  return base.TaskIO(vocab_size=tok.get_vocab_size(with_added_tokens=True),
                     causal=False, loss_unit="token", encode=encode,
                     decode=decode, mask=vocab.get("[MASK]"),
                     special=special)


TASK = base.Task(NAME, SentenceData, variant_data, build, io)
