"""BERT-style input corruption for masked language modelling."""

from __future__ import annotations

import numpy as np

# Of the selected positions: 80% become [MASK], 10% a random token, 10% stay.
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1


def bert_mask(tokens: np.ndarray, rng: np.random.Generator, *,
              mask_rate: float, mask_id: int, random_low: int,
              random_high: int) -> tuple[np.ndarray, np.ndarray]:
  """Selects positions to predict and corrupts them with the 80/10/10 rule.

  Each position is selected independently with probability `mask_rate`.
  A selected position becomes `mask_id` with probability 0.8, a token drawn
  uniformly from [random_low, random_high) with probability 0.1 (it may
  equal the original), and stays unchanged otherwise.

  Args:
    tokens: int [n] the real (non-padding) tokens of one row.
    rng: the row's generator.
    mask_rate: selection probability, in (0, 1).
    mask_id: the [MASK] token.
    random_low: first token of the replacement range.
    random_high: one past the last token of the replacement range.

  Returns:
    (inputs int32 [n], selected bool [n]).
  """
  n = tokens.shape[0]
  selected = rng.random(n) < mask_rate
  action = rng.random(n)
  inputs = tokens.astype(np.int32)
  inputs[selected & (action < MASK_FRACTION)] = mask_id
  replace = selected & (action >= MASK_FRACTION) & (
      action < MASK_FRACTION + RANDOM_FRACTION)
  inputs[replace] = rng.integers(random_low, random_high,
                                 size=int(replace.sum()))
  return inputs, selected
