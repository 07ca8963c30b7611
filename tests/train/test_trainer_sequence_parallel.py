"""Sequence parallelism in models and in the trainer (`config.mesh.seq`):
on 8 forced CPU devices, sequence-sharded results equal one device's.

All checks run in ONE subprocess (seq_parallel_checks.py); each test reads
its part. Tolerances: the same float32 math summed in another order, well
above its ~1e-6 rounding and far below any real difference (a leaked or
dropped block changes results by O(1)).
"""

import types

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


def test_pallas_attention_runs_split_over_the_batch(results):
  """FAVOR+ "pallas" in a model under jit with batch-sharded inputs, in
  `sequence_sharding(sequence_axis=None)`: equal to one device and no
  all-gather in the compiled step; without it XLA gathers the inputs of
  the kernel it cannot split (what the check would see)."""
  found = _found(results, "kernel/")
  assert found.pop("kernel/unsplit") > 0
  assert len(found) == 2
  for name, got in found.items():
    assert got["error"] < TOL, (name, got)
    assert got["all_gathers"] == 0, (name, got)


def test_pallas_training_on_a_data_mesh_equals_parallel(results):
  # Another implementation of the same math over 3 Adam steps: float32
  # rounding, summed in another order, grows a little through the updates.
  found = _found(results, "train/")
  np.testing.assert_allclose(found["train/favor_pallas/causal/8x1"],
                             found["train/favor/causal/8x1"], rtol=1e-4)


@pytest.mark.parametrize("implementation,preferred,split", [
    ("auto", True, True), ("auto", False, False), ("pallas", False, True),
    ("parallel", True, False)])
def test_trainer_splits_pallas_attention_over_the_batch(
    monkeypatch, implementation, preferred, split):
  """On several devices with `mesh.seq == 1`, the trainer runs attention in
  a batch/head `shard_map` exactly when "pallas" runs: asked for, or chosen
  by "auto" (faked here: pallas_favor.preferred is the platform's rule)."""
  # pylint: disable-next=g-import-not-at-top
  from performer_jax.attention import pallas_favor, sequence
  from performer_jax.configs import copy as copy_config
  from performer_jax.train import trainer as trainer_lib
  monkeypatch.setattr(pallas_favor, "preferred", lambda *_: preferred)
  config = copy_config.get_config("smoke,favor")
  config.model.attention.implementation = implementation
  fake = types.SimpleNamespace(
      config=config, rules=(),
      mesh=types.SimpleNamespace(shape={"seq": 1}, size=4))
  with trainer_lib.Trainer.context(fake):
    active = sequence.current_sequence_sharding()
  assert (active is not None) == split
  if split:
    assert (active.sequence_axis, active.batch_axes) == (None, "data")
  assert sequence.current_sequence_sharding() is None
