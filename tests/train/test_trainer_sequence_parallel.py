"""Sequence parallelism in models and in the trainer (`config.mesh.seq`):
on 8 forced CPU devices, sequence-sharded results equal one device's.

All checks run in ONE subprocess (seq_parallel_checks.py); each test reads
its part. Tolerances: the same float32 math summed in another order, well
above its ~1e-6 rounding and far below any real difference (a leaked or
dropped block changes results by O(1)).
"""

import numpy as np
import pytest

from tests.helpers import multidevice

pytestmark = pytest.mark.xdist_group("seq_parallel")
TOL = 2e-5
results = multidevice.fixture("tests.helpers.seq_parallel_checks")
_found = multidevice.found


def test_sequence_sharded_models_equal_one_device(results):
  """Loss and parameter gradients, padded rows, causal and bidirectional,
  FAVOR+ (softmax and ReLU features), softmax and L2, on meshes
  (data=2, seq=4) and (seq=8)."""
  found = _found(results, "model/")
  assert len(found) == 5
  for name, err in found.items():
    assert err < TOL, (name, err)


@pytest.mark.parametrize("task", ["favor/causal", "softmax/mlm"])
def test_training_steps_with_seq_equal_seq_1(results, task):
  found = _found(results, f"train/{task}/")
  reference = found.pop(f"train/{task}/8x1")
  assert found
  for name, losses in found.items():
    np.testing.assert_allclose(losses, reference, rtol=TOL, err_msg=name)
