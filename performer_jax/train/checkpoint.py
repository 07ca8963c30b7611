"""Orbax checkpoints of the TrainState under `<workdir>/checkpoints`.

Every process calls `save` with its shards. `save` returns once the arrays
are off the devices (the donated state can be reused); `close` waits for the
writes. A small JSON `metadata` dict rides along. Resuming takes the newest
checkpoint that restores and is valid; a corrupt one (truncated or missing
files, a missing item, non-finite values) is moved, never deleted, to
`<workdir>/checkpoints_corrupt/` and the next older tried. Other shapes than
the model's mean another run's: `IncompatibleCheckpointError`, nothing moved.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from performer_jax.train.state import TrainState

log = logging.getLogger("performer_jax.train")
CORRUPT_DIR = "checkpoints_corrupt"


class IncompatibleCheckpointError(ValueError):
  """A checkpoint holds arrays of other shapes than the model's."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written; the message says why and what to
  do (earlier checkpoints are intact)."""


def _is_disk_full(error: BaseException) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _one_line(error: BaseException) -> str:
  text = f"{type(error).__name__}: {error}".strip().splitlines()
  return text[0][:300] if text else type(error).__name__


class Checkpointer:
  """Saves every `every` steps (plus forced saves) and keeps the newest k."""

  def __init__(self, workdir: str, *, keep: int, every: int):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    # The handler lets item_metadata read shapes without restoring.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """True when `step` (steps taken so far) is a periodic save point."""
    return self.every > 0 and step > 0 and step % self.every == 0

  def save(self, step: int, state: TrainState,
           metadata: dict[str, Any] | None = None) -> None:
    """Saves `state` as checkpoint `step` unless that step already exists."""
    if step in self._manager.all_steps():
      return
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                         custom_metadata=metadata or {})
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(step, e)

  def restore(self, step: int, abstract_state: TrainState,
              shardings: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Checkpoint `step` restored directly into `shardings` (no host copy),
    and its metadata."""
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
    state = self._manager.restore(step,
                                  args=ocp.args.StandardRestore(target))
    metadata = self._manager.metadata(step).custom_metadata or {}
    return state, dict(metadata)

  def restore_newest_valid(
      self, abstract_state: TrainState, shardings: TrainState,
      is_valid: Callable[[TrainState], bool]
  ) -> tuple[int, TrainState, dict[str, Any]] | None:
    """(step, state, metadata) of the newest checkpoint that restores and
    `is_valid`; the ones that do not are moved aside. None if none is."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        self._check_shapes(step, abstract_state)
        state, metadata = self.restore(step, abstract_state, shardings)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = _one_line(e)
      else:
        if is_valid(state):
          return step, state, metadata
        reason = "it holds non-finite values"
      self.quarantine(step, reason)
    return None

  def _check_shapes(self, step: int, abstract_state: TrainState) -> None:
    """Raises IncompatibleCheckpointError if checkpoint `step` holds arrays
    of other shapes or dtypes than `abstract_state` (compared as multisets,
    which needs no agreement on tree layout); unreadable metadata raises
    what orbax raises (a corrupt checkpoint)."""
    tree = self._manager.item_metadata(step).tree
    saved = collections.Counter(
        (tuple(x.shape), str(x.dtype))
        for x in jax.tree_util.tree_leaves(tree))
    wanted = collections.Counter(
        (tuple(x.shape), str(x.dtype))
        for x in jax.tree_util.tree_leaves(abstract_state))
    if saved != wanted:
      only_saved = sorted((saved - wanted).elements())[:3]
      only_wanted = sorted((wanted - saved).elements())[:3]
      raise IncompatibleCheckpointError(
          f"checkpoint {step} in {self.directory} holds arrays of other "
          f"shapes than this model (e.g. {only_saved} in the checkpoint, "
          f"{only_wanted} in the model): it belongs to another model. Train "
          "in a new workdir, or restore the config.json of this one.")

  def quarantine(self, step: int, reason: str) -> str:
    """Moves checkpoint `step` to checkpoints_corrupt/ (process 0 moves, all
    processes wait for it); returns the new path."""
    target = os.path.join(self.workdir, CORRUPT_DIR,
                          f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
      log.warning("checkpoint %d cannot be used (%s); moved it to %s and "
                  "trying the next older one", step, reason, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self._manager.reload()
    return target

  def _raise_write_error(self, step: int, error: BaseException) -> None:
    if _is_disk_full(error):
      raise CheckpointError(
          f"the disk is full: checkpoint {step} could not be written to "
          f"{self.directory}. The earlier checkpoints are intact; free "
          "space (or lower config.trainer.keep_checkpoints) and run the "
          "same command again to resume.") from error
    raise CheckpointError(f"checkpoint {step} could not be written to "
                          f"{self.directory}: {_one_line(error)}") from error

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(self.latest_step() or -1, e)

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()
