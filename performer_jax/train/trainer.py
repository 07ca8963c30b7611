"""`train_and_evaluate`: the training loop driven by a validated config.

The loop dispatches step t, then fetches the metrics of step t-1 (already
done), so the host never waits for the device except at checkpoints, evals
and the end. Before every save the pending metrics are checked: a
non-finite loss or gradient stops the run with `NonFiniteLossError`, and the
bad state is never written, so the newest checkpoint is the last good one.
SIGTERM makes the loop save the current step and return ("preempted"); the
next run in the same workdir resumes from the newest checkpoint, and since
batches and rngs are pure functions of the step it continues exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from performer_jax import models
from performer_jax.config import experiment
from performer_jax.nn import attention as attention_lib
from performer_jax.tasks import base
from performer_jax.train import checkpoint as checkpoint_lib
from performer_jax.train import distributed
from performer_jax.train import metrics as metrics_lib
from performer_jax.train import optimizer as optimizer_lib
from performer_jax.train import state as state_lib
from performer_jax.train import steps as steps_lib

log = logging.getLogger("performer_jax.train")
_ENDLESS_EVAL_BATCHES = 50


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN or infinite."""


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


class Trainer:
  """Builds the task, model, mesh and compiled steps for one config.

  Construction validates the config, initializes jax.distributed if asked,
  and jits `train_step`/`eval_step` once; `run` can then be called several
  times (e.g. for an interrupted and a resumed run) without recompiling.
  """

  def __init__(self, config: ml_collections.ConfigDict |
               experiment.ExperimentConfig, *,
               make_model: Callable[..., nn.Module] | None = None):
    """Args: config (a ConfigDict is parsed and checked first);
    make_model(model_config, *, vocab_size, causal) builds the model
    (default: the config's model_builder)."""
    config = experiment.parse(config)
    self.config = config
    distributed.maybe_initialize(config.distributed)
    self.mesh = distributed.make_mesh(config)
    self.is_chief = jax.process_index() == 0
    self.task: base.TaskData = config.task_spec.build(
        config.data, process_index=jax.process_index(),
        process_count=jax.process_count())
    self._check_task()
    if make_model is None:
      self.model = config.build_model(vocab_size=self.task.vocab_size,
                                      causal=self.task.causal)
    else:
      self.model = make_model(config.model, vocab_size=self.task.vocab_size,
                              causal=self.task.causal)
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        config.optimizer, config.trainer.steps)
    self.rules = state_lib.axis_rules(models.LOGICAL_AXIS_RULES)
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    with self.context():
      self.abstract_state, self.shardings = state_lib.state_shardings(
          self.model, self.tx, self.mesh, self.rules, batch_size, seq_len)
    self.batch_sharding = distributed.batch_sharding(self.mesh)
    replicated = NamedSharding(self.mesh, P())
    att = config.model.attention
    redraw = functools.partial(attention_lib.redraw_random_features,
                               orthogonal=att.orthogonal, scaling=att.scaling)
    redraw_every = att.redraw_every if att.kind == "favor" else 0
    self.init_fn = jax.jit(
        state_lib.make_init_fn(self.model, self.tx, batch_size, seq_len),
        out_shardings=self.shardings)
    self.train_step = jax.jit(
        steps_lib.make_train_step(self.model, self.tx, self.schedule,
                                  redraw_every=redraw_every,
                                  redraw_fn=redraw,
                                  microbatches=config.trainer.microbatches),
        in_shardings=(self.shardings, self.batch_sharding),
        out_shardings=(self.shardings, replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        steps_lib.make_eval_step(self.model),
        in_shardings=(self.shardings, self.batch_sharding),
        out_shardings=replicated)

  def context(self):
    """Logical-axis rules, active whenever the model is traced.

    No mesh context on purpose: parameters and batches get their placement
    from the jit in/out shardings, and without a mesh flax's logical
    constraints are no-ops, so models need not annotate every activation.
    """
    return nn.logical_axis_rules(self.rules)

  def _check_task(self) -> None:
    cfg = self.config.data
    for name, source in (("train", self.task.train), ("eval", self.task.eval)):
      if (source.global_batch_size != cfg.batch_size
          or source.seq_len != cfg.seq_len):
        raise ValueError(
            f"task {self.config.task!r} {name} source has batch "
            f"{source.global_batch_size} x length {source.seq_len}, but the "
            f"config asks for {cfg.batch_size} x {cfg.seq_len}")
    if self.task.loss_unit not in ("token", "byte", "dim"):
      raise ValueError(f"task {self.config.task!r} has loss_unit "
                       f"{self.task.loss_unit!r}; expected token/byte/dim")

  def get_batch(self, source: base.BatchSource, step: int
                ) -> dict[str, jax.Array]:
    local = source.get_batch(step)
    base.check_batch(local, source.global_batch_size // jax.process_count(),
                     source.seq_len)
    return distributed.global_batch(
        {k: local[k] for k in base.BATCH_KEYS}, self.batch_sharding,
        source.global_batch_size)

  def init_state(self) -> state_lib.TrainState:
    rng = jax.random.PRNGKey(self.config.trainer.seed)
    with self.context():
      return self.init_fn(rng)

  def evaluate(self, state: state_lib.TrainState) -> dict[str, float]:
    """Metrics over the eval source (all batches, or trainer.eval_batches)."""
    n = self.task.eval.num_batches
    if n is None:
      n = _ENDLESS_EVAL_BATCHES
    if self.config.trainer.eval_batches:
      n = min(n, self.config.trainer.eval_batches)
    if n == 0:
      return {}
    totals = None
    with self.context():
      for i in range(n):
        sums = self.eval_step(state, self.get_batch(self.task.eval, i))
        totals = sums if totals is None else jax.tree_util.tree_map(
            lambda a, b: a + b, totals, sums)
    return steps_lib.summarize(jax.device_get(totals), self.task.loss_unit)

  def run(self, workdir: str, *,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Trains to config.trainer.steps, resuming from `workdir` if possible.

    Args:
      workdir: where config.json, metrics.jsonl, tb/ and checkpoints/ live.
      on_step: called with the number of steps taken after each dispatch
        (tests use it to deliver signals at a chosen step).
    """
    return _Run(self, workdir, on_step).run()


class _Run:
  """One call of Trainer.run: the loop and its bookkeeping."""

  def __init__(self, trainer: Trainer, workdir: str,
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

  def _consume(self) -> None:
    """Fetches pending step metrics, checks them, logs at log_every."""
    for step, metrics in self.pending:
      m = jax.device_get(metrics)
      loss = float(m["loss_sum"]) / max(float(m["weight_sum"]), 1.0)
      norms = float(m["grad_norm"]), float(m["param_norm"])
      if not (math.isfinite(loss) and all(map(math.isfinite, norms))):
        raise NonFiniteLossError(
            f"non-finite training loss ({loss}), gradient norm ({norms[0]}) "
            f"or parameter norm ({norms[1]}) at step {step}; stopping. The "
            "newest "
            f"checkpoint (step {self.ckpt.latest_step()}) was saved before "
            "this step and is kept. Lower optimizer.learning_rate, raise "
            "optimizer.warmup_steps or check the data.")
      self.losses[step] = loss
      for k in ("loss_sum", "weight_sum", "correct_sum"):
        self.window[k] = self.window.get(k, 0.0) + float(m[k])
      now = time.perf_counter()
      if self.window_start is None:  # the first step includes compilation
        self.window_start = now
      else:
        self.window_steps += 1
      done = step + 1
      if done % self.cfg.log_every == 0:
        self._log_train(done, now, float(m["learning_rate"]),
                        float(m["grad_norm"]))
    self.pending = []

  def _log_train(self, done: int, now: float, lr: float,
                 grad_norm: float) -> None:
    elapsed = max(now - self.window_start, 1e-9)
    data = self.t.config.data
    metrics = steps_lib.summarize(self.window, self.t.task.loss_unit)
    metrics.update(
        learning_rate=lr, grad_norm=grad_norm,
        steps_per_sec=self.window_steps / elapsed,
        tokens_per_sec=self.window_steps * data.batch_size * data.seq_len
        / elapsed)
    if not self.window_steps:  # only the compiling first step: no timing
      del metrics["steps_per_sec"], metrics["tokens_per_sec"]
    self.writer.write(done, "train", metrics)
    self.progress.update(done, metrics)
    self.window, self.window_steps, self.window_start = {}, 0, now

  def _evaluate(self, done: int, state) -> None:
    self.eval_metrics = self.t.evaluate(state)
    if not self.eval_metrics:
      return
    self.writer.write(done, "eval", self.eval_metrics)
    self.progress.message(
        f"eval at step {done}: " + " ".join(
            f"{k}={v:.4g}" for k, v in self.eval_metrics.items()))

  def run(self) -> TrainResult:
    t, cfg = self.t, self.cfg
    self.ckpt = checkpoint_lib.Checkpointer(
        self.workdir, keep=cfg.keep_checkpoints, every=cfg.checkpoint_every)
    self.writer = metrics_lib.MetricsWriter(self.workdir,
                                            enabled=t.is_chief)
    os.makedirs(self.workdir, exist_ok=True)
    if t.is_chief:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        json.dump(t.config.to_dict(), f, indent=2)
    start = self.ckpt.latest_step()
    if start is None:
      start, state = 0, t.init_state()
    else:
      log.info("resuming from %s at step %d", self.ckpt.directory, start)
      state = self.ckpt.restore(start, t.abstract_state, t.shardings)
    self.progress = metrics_lib.Progress(cfg.steps, start, mode=cfg.progress,
                                         enabled=t.is_chief)
    self.progress.message(
        f"task {t.config.task}: {state_lib.num_params(state.params):,} "
        f"params, mesh {dict(t.mesh.shape)}, steps {start}..{cfg.steps}, "
        f"unigram baseline {t.task.unigram_bits or float('nan'):.3f} "
        f"bits/{t.task.loss_unit}")
    old_handler = None
    if threading.current_thread() is threading.main_thread():
      old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    status = "finished"
    try:
      with t.context():
        for step in range(start, cfg.steps):
          batch = t.get_batch(t.task.train, step)
          state, metrics = t.train_step(state, batch)
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
              self.ckpt.save(done, state)
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
      if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
      self.ckpt.close()
      self.writer.close()
      self.progress.close()
    return TrainResult(state=state, train_losses=self.losses,
                       eval_metrics=self.eval_metrics, status=status)


def train_and_evaluate(config: ml_collections.ConfigDict |
                       experiment.ExperimentConfig, workdir: str, *,
                       make_model: Callable[..., nn.Module] | None = None
                       ) -> TrainResult:
  """Validates `config`, trains and evaluates, writing into `workdir`.

  A bad config fails before anything is compiled or written."""
  trainer = Trainer(config, make_model=make_model)
  os.makedirs(workdir, exist_ok=True)
  return trainer.run(workdir)
