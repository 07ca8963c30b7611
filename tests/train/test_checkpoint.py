"""Checkpoint writing errors reach the user as one clear line."""

import errno

import jax.numpy as jnp
import pytest

from performer_jax.train import checkpoint as checkpoint_lib
from performer_jax.train import state as state_lib


class _FullDisk:
  """Stands in for orbax's manager on a full disk."""

  def all_steps(self):
    return [2]

  def latest_step(self):
    return 2

  def save(self, *args, **kwargs):
    del args, kwargs
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:  # orbax wraps the OSError it met
      raise ValueError("async write failed") from e

  def wait_until_finished(self):
    raise OSError(errno.ENOSPC, "No space left on device")

  def close(self):
    pass


def test_a_full_disk_is_reported_with_the_fix(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, every=2)
  ckpt._manager.close()  # pylint: disable=protected-access
  ckpt._manager = _FullDisk()  # pylint: disable=protected-access
  state = state_lib.TrainState(step=jnp.zeros(()), params={}, opt_state=(),
                               random_features={}, rng=jnp.zeros(2))
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r"the disk is full: checkpoint 4 .*earlier "
                     r"checkpoints are intact"):
    ckpt.save(4, state)
  with pytest.raises(checkpoint_lib.CheckpointError, match="disk is full"):
    ckpt.close()
