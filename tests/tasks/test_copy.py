"""The synthetic copy task used by the trainer's smoke tests."""

import dataclasses

import numpy as np
import pytest

from performer_jax.schemas import ConfigError
from performer_jax.tasks import base
from performer_jax.tasks import copy as copy_task


def data_config(kind="causal", **overrides):
  return dataclasses.replace(copy_task.variant_data("smoke"),
                             **{"variant": kind, **overrides})


def make(data, **kwargs):
  return copy_task.TASK.build(data, **kwargs)


def test_causal_batch_is_a_shifted_copy():
  task = make(data_config(seq_len=32, batch_size=16))
  assert task.causal and task.vocab_size == 16 and task.loss_unit == "token"
  batch = task.train.get_batch(3)
  base.check_batch(batch, 16, 32)
  inputs, targets, weights, mask = (batch[k] for k in base.BATCH_KEYS)
  assert np.all(inputs[:, 0] == copy_task.BOS)
  np.testing.assert_array_equal(inputs[:, 1:][mask[:, 1:]],
                                targets[:, :-1][mask[:, 1:]])
  for row in range(16):
    length = int(mask[row].sum())
    half = length // 2
    assert length % 2 == 0 and 8 <= half <= 16
    seq = targets[row, :length]
    np.testing.assert_array_equal(seq[:half], seq[half:])
    assert np.all(seq >= copy_task.NUM_SPECIAL)
    assert np.all(targets[row, length:] == copy_task.PAD)
    # Only the copied half is scored.
    np.testing.assert_array_equal(weights[row],
                                  (np.arange(32) >= half) & (np.arange(32)
                                                             < length))


def test_mlm_batch_masks_only_scored_positions():
  task = make(data_config("mlm", seq_len=64,
                                              batch_size=32, mask_rate=0.3))
  assert not task.causal
  batch = task.train.get_batch(0)
  scored = batch["weights"] > 0
  assert np.all(batch["inputs"][scored] == copy_task.MASK)
  assert np.all(batch["inputs"][~scored] == batch["targets"][~scored])
  assert np.all(batch["key_mask"][scored])
  # About mask_rate of the real tokens are masked.
  rate = scored.sum() / batch["key_mask"].sum()
  assert 0.2 < rate < 0.4


def test_batches_are_pure_functions_of_step_and_split():
  task = make(data_config())
  a, b = task.train.get_batch(5), task.train.get_batch(5)
  for key in base.BATCH_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(task.train.get_batch(6)["targets"], a["targets"])
  assert not np.array_equal(task.eval.get_batch(5)["targets"], a["targets"])
  assert task.eval.num_batches == 2 and task.train.num_batches is None


def test_process_shards_tile_the_global_batch():
  full = make(data_config(batch_size=8)).train.get_batch(2)
  parts = [make(data_config(batch_size=8),
                                    process_index=i,
                                    process_count=4).train.get_batch(2)
           for i in range(4)]
  for key in base.BATCH_KEYS:
    np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), full[key])


@pytest.mark.parametrize("overrides,message", [
    ({"variant": "prefix"}, "config.data.variant"),
    ({"vocab_size": 3}, "config.data.vocab_size"),
    ({"mask_rate": 0.0}, "config.data.mask_rate"),
    ({"seq_len": 1}, "config.data.seq_len"),
])
def test_bad_data_config(overrides, message):
  with pytest.raises(ConfigError, match=message):
    data_config(**overrides)


def test_unknown_data_key():
  section = data_config().to_config_dict()
  section.path = "x"
  with pytest.raises(ConfigError, match=r"unknown key config.data.path"):
    copy_task.CopyData.parse(section)
  with pytest.raises(ValueError, match="not divisible by process_count"):
    make(data_config(batch_size=6), process_index=0,
                             process_count=4)
