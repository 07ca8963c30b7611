"""performer_jax.inference.score: how far each forward pass is padded (the
scores themselves are checked against brute force in test_commands.py)."""

import numpy as np
import pytest

from performer_jax.inference import score


@pytest.mark.parametrize("lengths, want", [
    ([30], 64), ([64], 64), ([65, 3], 128), ([200, 100], 256),
    ([250], 256), ([256], 256), ([1], 64)])
def test_padded_to_the_longest_row_in_multiples_of_64(lengths, want):
  rows = [np.ones(n, np.int32) for n in lengths]
  assert score.padded_length(rows, 256) == want
  padded = score._pad(rows, 4, 256)  # pylint: disable=protected-access
  assert padded.shape == (4, want)
  for b, n in enumerate(lengths):
    assert padded[b, :n].all() and not padded[b, n:].any()


def test_never_past_the_training_length():
  assert score.padded_length([np.ones(100, np.int32)], 96) == 96
