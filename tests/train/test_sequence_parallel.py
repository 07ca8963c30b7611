"""Sequence parallelism in models and in the trainer (`config.mesh.seq`):
on 8 forced CPU devices, sequence-sharded results equal one device's.

All checks run in ONE subprocess (seq_parallel_checks.py); each test reads
its part. Tolerances: the same float32 math summed in another order, well
above its ~1e-6 rounding and far below any real difference (a leaked or
dropped block changes results by O(1)).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests import inputs

pytestmark = pytest.mark.xdist_group("seq_parallel")
TOL = 2e-5


@pytest.fixture(scope="module")
def results():
  env = inputs.subprocess_env(
      XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, "-m", "tests.train.seq_parallel_checks"], env=env,
      cwd=inputs.REPO, capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _found(results, prefix):
  found = {k: v for k, v in results.items() if k.startswith(prefix)}
  assert found, prefix
  for name, value in found.items():
    assert not isinstance(value, str), f"{name} failed:\n{value}"
  return found


def test_sequence_sharded_models_equal_one_device(results):
  """Loss and parameter gradients, padded rows, causal and bidirectional,
  FAVOR+ (softmax and ReLU features), softmax and L2, on meshes
  (data=2, seq=4) and (seq=8)."""
  found = _found(results, "model/")
  assert len(found) == 6
  for name, err in found.items():
    assert err < TOL, (name, err)


@pytest.mark.parametrize("task", ["favor/causal", "softmax/mlm"])
def test_training_steps_with_seq_equal_seq_1(results, task):
  found = _found(results, f"train/{task}/")
  reference = found.pop(f"train/{task}/8x1")
  assert found
  for name, losses in found.items():
    np.testing.assert_allclose(losses, reference, rtol=TOL, err_msg=name)
