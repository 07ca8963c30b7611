"""One training run in a workdir: the loop and its bookkeeping.

The loop dispatches step t before fetching step t-1's metrics, so the host
waits for the device only at checkpoints, evals and the end. A non-finite
loss, gradient or parameter norm raises `NonFiniteLossError`. A state is
saved only if one step from it (`_trains_on`) is finite: every checkpoint
can be trained on. A checkpoint carries its partial metrics window, and a
crashed run's records past it are dropped, so a resumed run logs what an
uninterrupted one would. SIGTERM saves and returns "preempted"; batches and
rngs are pure functions of the step, so the next run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from performer_jax.train import checkpoint as checkpoint_lib
from performer_jax.train import input_pipeline
from performer_jax.train import metrics as metrics_lib
from performer_jax.train import state as state_lib
from performer_jax.train import steps as steps_lib
from performer_jax.train import workdir as workdir_lib

log = logging.getLogger("performer_jax.train")
_WINDOW_KEYS = ("loss_sum", "weight_sum", "correct_sum")


class NonFiniteLossError(FloatingPointError):
  """Training diverged: a loss, gradient or parameter norm is NaN or inf."""


@dataclasses.dataclass
class TrainResult:
  """What a call to `Trainer.run` produced.

  Attributes:
    state: the final TrainState (on the mesh).
    train_losses: step index -> training loss of that step, for the steps
      run by this call.
    eval_metrics: the last evaluation's metrics ({} if none ran).
    status: "finished" or "preempted" (SIGTERM; a checkpoint was saved).
  """

  state: state_lib.TrainState
  train_losses: dict[int, float]
  eval_metrics: dict[str, float]
  status: str


def _finite(metrics: dict[str, Any]) -> tuple[bool, float, float, float]:
  m = jax.device_get(metrics)
  loss = float(m["loss_sum"]) / max(float(m["weight_sum"]), 1.0)
  grad, param = float(m["grad_norm"]), float(m["param_norm"])
  return (all(map(math.isfinite, (loss, grad, param))), loss, grad, param)


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(state: state_lib.TrainState) -> bool:
  """True if every float leaf of the state is finite (one device reduce)."""
  leaves = [x for x in jax.tree_util.tree_leaves(
      (state.params, state.opt_state, state.random_features))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(_all_finite(leaves)) if leaves else True


class Run:
  """One call of Trainer.run."""

  def __init__(self, trainer, workdir: str,
               on_step: Callable[[int], None] | None):
    self.t = trainer
    self.cfg = trainer.config.trainer
    self.workdir = workdir
    self.on_step = on_step
    self.losses: dict[int, float] = {}
    self.eval_metrics: dict[str, float] = {}
    self.pending: list[tuple[int, Any]] = []
    self.window: dict[str, float] = {}
    self.window_steps = 0
    self.window_start: float | None = None
    self.data_wait = 0.0  # seconds the loop waited for batches this window
    self.preempted = False

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.preempted = True

  def _stop_requested(self, done: int) -> bool:
    if jax.process_count() == 1:
      return self.preempted
    # Processes must agree on the step at which they save and stop.
    if done % self.cfg.log_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.preempted))
    return bool(np.any(flags))

  def _diverged(self, what: str, loss: float, grad: float, param: float
                ) -> NonFiniteLossError:
    newest = self.ckpt.latest_step()
    kept = (f"The newest checkpoint (step {newest}) trains on and is kept."
            if newest is not None else "There is no checkpoint yet: a rerun "
            "starts from scratch.")
    return NonFiniteLossError(
        f"training diverged: {what} gives a non-finite loss ({loss}), "
        f"gradient norm ({grad}) or parameter norm ({param}). {kept} Lower "
        "config.optimizer.learning_rate, raise config.optimizer."
        "warmup_steps or check the data.")

  def _consume(self) -> None:
    """Fetches pending step metrics, checks them, logs at log_every."""
    for step, metrics in self.pending:
      ok, loss, grad, param = _finite(metrics)
      if not ok:
        raise self._diverged(f"step {step}", loss, grad, param)
      m = jax.device_get(metrics)
      self.losses[step] = loss
      for k in _WINDOW_KEYS:
        self.window[k] = self.window.get(k, 0.0) + float(m[k])
      now = time.perf_counter()
      if self.window_start is None:  # the first step includes compilation
        self.window_start = now
      else:
        self.window_steps += 1
      done = step + 1
      if done % self.cfg.log_every == 0:
        self._log_train(done, now, float(m["learning_rate"]), grad)
    self.pending = []

  def _log_train(self, done: int, now: float, lr: float,
                 grad_norm: float) -> None:
    elapsed = max(now - self.window_start, 1e-9)
    data = self.t.config.data
    metrics = steps_lib.summarize(self.window, self.t.task.loss_unit)
    metrics.update(learning_rate=lr, grad_norm=grad_norm)
    if self.window_steps:  # not only the compiling first step
      metrics["data_wait"] = self.data_wait / self.window_steps
      metrics.update(
          steps_per_sec=self.window_steps / elapsed,
          tokens_per_sec=self.window_steps * data.batch_size * data.seq_len
          / elapsed)
    self.writer.write(done, "train", metrics)
    self.progress.update(done, metrics)
    self.window, self.window_steps, self.window_start = {}, 0, now
    self.data_wait = 0.0

  def _evaluate(self, done: int, state) -> None:
    self.eval_metrics = self.t.evaluate(state)
    if not self.eval_metrics:
      return
    self.writer.write(done, "eval", self.eval_metrics)
    self.progress.message(
        f"eval at step {done}: " + " ".join(
            f"{k}={v:.4g}" for k, v in self.eval_metrics.items()))

  def _trains_on(self, done: int, state) -> None:
    """Runs step `done` on a copy of `state`; raises if it diverges."""
    # train_step donates its state: the probe steps on a copy.
    probe = self.t.copy_state(state)
    _, metrics = self.t.train_step(probe, self.t.get_batch(self.t.task.train,
                                                           done))
    ok, loss, grad, param = _finite(metrics)
    if not ok:
      raise self._diverged(f"the state after step {done} is not saved: the "
                           "next step on it", loss, grad, param)

  def _save(self, done: int, state) -> None:
    self._trains_on(done, state)
    self.ckpt.save(done, state, {"metrics_window": dict(self.window)})

  def _eval_missing(self, start: int, records: list[dict[str, Any]]) -> bool:
    """True if an eval is due at the resumed step and the interrupted run
    did not log it (it was stopped between saving and evaluating). Process
    0 reads the records; every process takes its answer (evals are
    collective)."""
    cfg = self.cfg
    due = bool(start and cfg.eval_every and start % cfg.eval_every == 0
               and start < cfg.steps)
    missing = due and start not in workdir_lib.logged_steps(records, "eval")
    if jax.process_count() > 1:
      missing = bool(multihost_utils.broadcast_one_to_all(np.int32(missing)))
    return missing

  def _restore(self):
    """(start step, state): the newest valid checkpoint, or a fresh init."""
    t = self.t
    found = self.ckpt.restore_newest_valid(t.abstract_state, t.shardings,
                                           all_finite)
    init_from = self.cfg.init_from
    if found is None:
      state = t.init_state(init_from)
      if init_from:
        log.info("parameters initialized from %s (random features drawn "
                 "afresh, optimizer and step from zero)", init_from)
      return 0, state
    start, state, metadata = found
    log.info("resuming from %s at step %d%s", self.ckpt.directory, start,
             f" (its own checkpoint: trainer.init_from={init_from!r} is "
             "ignored)" if init_from else "")
    self.window = {k: float(v) for k, v in
                   metadata.get("metrics_window", {}).items()}
    return start, state

  def run(self):
    t, cfg = self.t, self.cfg
    os.makedirs(self.workdir, exist_ok=True)
    self.ckpt = checkpoint_lib.Checkpointer(
        self.workdir, keep=cfg.keep_checkpoints, every=cfg.checkpoint_every)
    try:
      changes = workdir_lib.check_resume(
          t.config, self.workdir, has_checkpoint=bool(self.ckpt.all_steps()))
      start, state = self._restore()
    except BaseException:
      self.ckpt.close()
      raise
    records = []
    if t.is_chief:
      workdir_lib.truncate_metrics(self.workdir, start)
      records = workdir_lib.read_metrics(self.workdir)
      workdir_lib.record_config(t.config, self.workdir, start)
    self.writer = metrics_lib.MetricsWriter(
        self.workdir, enabled=t.is_chief,
        purge_step=start + 1 if start else None)
    self.progress = metrics_lib.Progress(cfg.steps, start, mode=cfg.progress,
                                         enabled=t.is_chief)
    for key, (old, new) in changes.items():
      self.progress.message(f"resuming with {key} changed: {old!r} -> "
                            f"{new!r}")
    self.progress.message(
        f"task {t.config.task}: {state_lib.num_params(state.params):,} "
        f"params, mesh {dict(t.mesh.shape)}, steps {start}..{cfg.steps}, "
        f"unigram baseline {t.task.unigram_bits or float('nan'):.3f} "
        f"bits/{t.task.loss_unit}")
    old_handler = None
    if threading.current_thread() is threading.main_thread():
      old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    status = "finished"
    batches = None
    try:
      with t.context():
        # An eval due at the resumed step that the interrupted run did not
        # log (it was killed between saving and evaluating).
        if self._eval_missing(start, records):
          self._evaluate(start, state)
        batches = input_pipeline.local_batches(t.task.train, start,
                                               prefetch=cfg.prefetch)
        for step in range(start, cfg.steps):
          waiting = time.perf_counter()
          local = next(batches)
          self.data_wait += time.perf_counter() - waiting
          state, metrics = t.train_step(state, t.to_global(t.task.train,
                                                           local))
          self._consume()  # metrics of the previous step
          self.pending.append((step, metrics))
          done = step + 1
          if self.on_step is not None:
            self.on_step(done)
          stop = self._stop_requested(done)
          save = stop or self.ckpt.due(done) or done == cfg.steps
          evaluate = (done == cfg.steps or (
              cfg.eval_every and done % cfg.eval_every == 0))
          if save or evaluate:
            self._consume()
            paused = time.perf_counter()
            if save:
              self._save(done, state)
            if evaluate:
              self._evaluate(done, state)
            # Keep evals and saves out of the training throughput.
            if self.window_start is not None:
              self.window_start += time.perf_counter() - paused
          if stop:
            status = "preempted"
            self.progress.message(f"SIGTERM: saved step {done}, stopping")
            break
        self._consume()
      if start >= cfg.steps and not self.eval_metrics:
        self._evaluate(start, state)
    finally:
      if batches is not None and hasattr(batches, "close"):
        batches.close()  # stops the prefetch thread
      if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
      try:
        self.ckpt.close()
      finally:
        self.writer.close()
        self.progress.close()
    return TrainResult(state=state, train_losses=self.losses,
                       eval_metrics=self.eval_metrics, status=status)
