"""The MiniLM conversion experiment's metrics and sentence extraction."""

import numpy as np

from experiments.minilm import distill
from experiments.minilm import sentences


def test_retrieval_metrics():
  rng = np.random.default_rng(0)
  teacher = rng.normal(size=(50, 8))
  cosine, agree = distill.retrieval_metrics(3.0 * teacher, teacher)
  assert abs(cosine - 1.0) < 1e-12 and agree == 1.0
  # Independent embeddings: cosine near 0, agreement near chance (1/49).
  cosine, agree = distill.retrieval_metrics(rng.normal(size=(50, 8)),
                                            teacher)
  assert abs(cosine) < 0.2 and agree < 0.2
  # Agreement counts the rows whose nearest neighbour is the same.
  # Teacher pairs (0, 1) and (2, 3); moving row 1 away changes the nearest
  # neighbours of rows 0 (now 3) and 1 (now 2) only.
  points = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
  moved = points.copy()
  moved[1] = [-1.0, 0.05]
  assert distill.retrieval_metrics(moved, points)[1] == 0.5


def test_wiki_markup_is_removed():
  line = ("'''Anarchism''' is a [[political philosophy|philosophy]] that "
          "rejects [[hierarchy]].&lt;ref name=a&gt;x&lt;/ref&gt;{{sfn|B}}")
  assert sentences._clean(line) == (  # pylint: disable=protected-access
      "Anarchism is a philosophy that rejects hierarchy.")
