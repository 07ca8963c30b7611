"""Orbax checkpoints of the TrainState under `<workdir>/checkpoints`.

Orbax coordinates multi-process saves itself (every process calls `save`
with its shards). Saves are asynchronous: `save` returns once the arrays are
copied off the devices, so the donated state can be reused immediately;
`close` waits for the writes to finish.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from performer_jax.train.state import TrainState


class Checkpointer:
  """Saves every `every` steps (plus forced saves) and keeps the newest k."""

  def __init__(self, workdir: str, *, keep: int, every: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """True when `step` (steps taken so far) is a periodic save point."""
    return self.every > 0 and step > 0 and step % self.every == 0

  def save(self, step: int, state: TrainState) -> None:
    """Saves `state` as checkpoint `step` unless that step already exists."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, abstract_state: TrainState,
              shardings: TrainState) -> TrainState:
    """Restores checkpoint `step` directly into `shardings` (no host copy)."""
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
