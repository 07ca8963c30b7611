"""The prefetching pipeline yields exactly the batches of the pure
`get_batch(step)`, from any start step (so a resume continues exactly)."""

import numpy as np
import pytest

from performer_jax.tasks import protein
from performer_jax.train import input_pipeline


@pytest.mark.parametrize("start,prefetch", [(0, 2), (7, 0), (7, 3)])
def test_batches_equal_get_batch_from_any_step(start, prefetch):
  task = protein.build(protein.MLM.variant_data("smoke"))
  batches = input_pipeline.local_batches(task.train, start, prefetch=prefetch)
  for step in range(start, start + 4):
    got, want = next(batches), task.train.get_batch(step)
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  batches.close()
  # Different seeds give different batches; the same seed the same ones.
  other = protein.build(protein.MLM.data.parse(
      {**protein.MLM.variant_data("smoke").to_dict(), "seed": 1}))
  assert not np.array_equal(other.train.get_batch(start)["targets"],
                            task.train.get_batch(start)["targets"])
