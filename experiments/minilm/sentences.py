"""Plain-text sentences of the Wikipedia XML sample the text task ships.

The sample (`scripts/setup_data.sh`, data/defaults.py) is streamed line by
line from its bz2 file; article text loses its wiki markup (templates,
links, references, tables, bold/italics) and is cut into sentences at ". ".
Articles alternate between the splits: every `holdout_every`-th article is
held out, so no held-out sentence shares an article with a training one.
"""

from __future__ import annotations

import bz2
import re
from typing import Iterator

from performer_jax.data import defaults
from performer_jax.data import files

_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<[^>]+>")
_SKIP = ("{{", "}}", "|", "!", "[[", "*", "#", ":", ";", "=", "<", "{|")


def _clean(line: str) -> str:
  line = line.replace("&lt;", "<").replace("&gt;", ">").replace(
      "&quot;", '"').replace("&amp;", "&").replace("&nbsp;", " ")
  line = _REF.sub("", line)
  for _ in range(3):
    line = _TEMPLATE.sub("", line)
  line = _LINK.sub(r"\1", line)
  return re.sub(r"'{2,}", "", line).strip()


def articles(path: str | None = None) -> Iterator[list[str]]:
  """The sentences of each article, in file order (5 to 60 words each)."""
  path = path or str(files.require_file(defaults.wiki_sample(),
                                        defaults.WIKI_SAMPLE_PROVIDER))
  current: list[str] = []
  with bz2.open(path, "rt", encoding="utf-8", errors="replace") as f:
    for raw in f:
      line = raw.strip()
      if line.startswith("<title>"):
        if current:
          yield current
        current = []
        continue
      if not line or line.startswith(_SKIP) or "<text" in line:
        continue
      for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", _clean(line)):
        words = sentence.split()
        if 5 <= len(words) <= 60 and sentence[-1:] in ".!?":
          current.append(sentence)
  if current:
    yield current


def split(num_eval: int, num_train: int, holdout_every: int = 4
          ) -> tuple[list[str], list[str]]:
  """(train, held-out) sentences, at most `num_train` and exactly
  `num_eval` (ValueError if the sample has fewer)."""
  train, held = [], []
  for index, sentences in enumerate(articles()):
    target = held if index % holdout_every == holdout_every - 1 else train
    target.extend(sentences)
    if len(held) >= num_eval and len(train) >= num_train:
      break
  if len(held) < num_eval:
    raise ValueError(f"the sample holds only {len(held)} held-out "
                     f"sentences, fewer than {num_eval}")
  return train[:num_train], held[:num_eval]
