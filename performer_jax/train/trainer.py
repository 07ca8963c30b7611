"""`train_and_evaluate(config, workdir)` and the `Trainer` it builds.

The Trainer turns a checked config into a mesh, a task, a model, an
optimizer and the compiled `train_step`/`eval_step`; `Trainer.run` trains in
a workdir (loop.py: checkpoints, metrics, preemption, resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from performer_jax import experiment
from performer_jax import linen as pnn
from performer_jax.attention import api as attention_api
from performer_jax.attention import sequence as sequence_lib
from performer_jax.data import dataset as prepared
from performer_jax.data import verify as verify_lib
from performer_jax.tasks import base
from performer_jax.train import distributed
from performer_jax.train import loop
from performer_jax.train import optimizer as optimizer_lib
from performer_jax.train import state as state_lib
from performer_jax.train import steps as steps_lib
from performer_jax.train import warm_start
from performer_jax.train import workdir as workdir_lib

log = logging.getLogger("performer_jax.train")
_ENDLESS_EVAL_BATCHES = 50


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
    with prepared.opened() as datasets:
      self.task: base.TaskData = config.task_spec.build(
          config.data, process_index=jax.process_index(),
          process_count=jax.process_count())
    if config.data.verify:
      for report in verify_lib.require_intact(datasets):
        log.info("data.verify: %s", report.summary())
    self._check_task()
    if make_model is None:
      self.model = config.build_model(vocab_size=self.task.vocab_size,
                                      causal=self.task.causal)
    else:
      self.model = make_model(config.model, vocab_size=self.task.vocab_size,
                              causal=self.task.causal)
    self.tx, self.schedule = optimizer_lib.make_optimizer(
        config.optimizer, config.trainer.steps)
    warmup = optimizer_lib.warmup_steps(config.optimizer, config.trainer.steps)
    if warmup != config.optimizer.warmup_steps and self.is_chief:
      log.info("warmup: %d steps instead of optimizer.warmup_steps=%d, to "
               "fit trainer.steps=%d", warmup, config.optimizer.warmup_steps,
               config.trainer.steps)
    self.rules = state_lib.axis_rules(pnn.LOGICAL_AXIS_RULES)
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    with self.context():
      self.abstract_state, self.shardings = state_lib.state_shardings(
          self.model, self.tx, self.mesh, self.rules, batch_size, seq_len)
    self.batch_sharding = distributed.batch_sharding(self.mesh)
    replicated = NamedSharding(self.mesh, P())
    att = config.model.attention
    redraw = functools.partial(pnn.redraw_random_features,
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
    # For a step that must not consume the state (train_step donates it):
    # one program for the whole state, laid out like it.
    self.copy_state = jax.jit(
        lambda state: jax.tree_util.tree_map(jnp.copy, state),
        in_shardings=(self.shardings,), out_shardings=self.shardings)

  @contextlib.contextmanager
  def context(self):
    """Logical-axis rules, and with `mesh.seq > 1` sequence-parallel
    attention (`attention.sequence_sharding`), active whenever the model is
    traced; FAVOR+ "pallas" (or "auto" choosing it) on several devices
    runs in a `shard_map` over batch and heads even with `mesh.seq == 1`
    (XLA cannot split a kernel).

    No mesh context on purpose: parameters and batches get their placement
    from the jit in/out shardings, and without a mesh flax's logical
    constraints are no-ops, so models need not annotate every activation.
    """
    with contextlib.ExitStack() as stack:
      stack.enter_context(nn.logical_axis_rules(self.rules))
      attention = self.config.model.attention
      if self.mesh.shape["seq"] > 1:
        stack.enter_context(sequence_lib.sequence_sharding(
            self.mesh, sequence_axis="seq", batch_axes="data",
            head_axis="model"))
      elif (attention.kind == "favor" and self.mesh.size > 1 and
            attention_api.resolve_implementation(
                attention.implementation, attention.kernel, True) == "pallas"):
        stack.enter_context(sequence_lib.sequence_sharding(
            self.mesh, sequence_axis=None, batch_axes="data",
            head_axis="model"))
      yield

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
    """Global batch `step` of `source` (each process loads its rows)."""
    return self.to_global(source, source.get_batch(step))

  def to_global(self, source: base.BatchSource,
                local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> the global, sharded batch."""
    base.check_batch(local, source.global_batch_size // jax.process_count(),
                     source.seq_len)
    return distributed.global_batch(
        {k: local[k] for k in base.BATCH_KEYS}, self.batch_sharding,
        source.global_batch_size)

  def init_state(self, init_from: str = "") -> state_lib.TrainState:
    """A fresh state; with `init_from` (a workdir or exported model) its
    params come from there (train/warm_start.py), the rest stays fresh."""
    rng = jax.random.PRNGKey(self.config.trainer.seed)
    with self.context():
      state = self.init_fn(rng)
    if init_from:
      state = dataclasses.replace(state, params=warm_start.load_params(
          init_from, self.abstract_state.params, self.shardings.params))
    return state

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
          on_step: Callable[[int], None] | None = None) -> loop.TrainResult:
    """Trains to config.trainer.steps, resuming from `workdir` if possible.

    Args:
      workdir: where config.json, metrics.jsonl, tb/ and checkpoints/ live.
      on_step: called with the number of steps taken after each dispatch
        (tests use it to deliver signals at a chosen step).
    """
    return loop.Run(self, workdir, on_step).run()


def train_and_evaluate(config: ml_collections.ConfigDict |
                       experiment.ExperimentConfig, workdir: str, *,
                       make_model: Callable[..., nn.Module] | None = None
                       ) -> loop.TrainResult:
  """Validates `config`, trains and evaluates, writing into `workdir`.

  A bad config, or a workdir whose checkpoints belong to another run, fails
  before anything is loaded, compiled or written."""
  config = experiment.parse(config)
  workdir_lib.check_resume(config, workdir,
                           workdir_lib.has_checkpoints(workdir))
  trainer = Trainer(config, make_model=make_model)
  os.makedirs(workdir, exist_ok=True)
  return trainer.run(workdir)
