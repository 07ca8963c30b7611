"""Validation of a training config before anything is built or compiled.

Every check raises `ConfigError` naming the key, the bad value and what is
allowed, so a mistyped config fails in milliseconds instead of as a shape
error inside jit. `config_flags` already rejects override keys that do not
exist; `validate_config` also catches values of the right type but wrong
meaning, and keys added by hand in a config file.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import ml_collections

from performer_jax import config_checks
from performer_jax import models
from performer_jax import tasks as tasks_lib
from performer_jax.lipschitz import model as invertible_model
from performer_jax.models import config as model_config_lib
from performer_jax.train import synthetic_task

SECTIONS = ("task", "model_builder", "data", "model", "optimizer", "trainer",
            "mesh", "distributed")
# config.model_builder -> make(model_config, *, vocab_size, causal).
MODEL_BUILDERS = {
    "transformer": models.make_model,
    # Kim et al.'s invertible L2 Transformer: contractive (c = 0.9 in the
    # 2-norm) L2 attention and MLP branches in x + g(x) residual blocks.
    "invertible_l2": functools.partial(invertible_model.make_invertible_model,
                                       c=0.9, norm="2"),
}
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "rsqrt", "constant")
PROGRESS = ("auto", "tqdm", "log")
_OPTIMIZER_KEYS = ("name", "learning_rate", "b1", "b2", "eps", "weight_decay",
                   "grad_clip_norm", "schedule", "warmup_steps",
                   "final_lr_fraction")
_TRAINER_KEYS = ("steps", "log_every", "eval_every", "eval_batches",
                 "checkpoint_every", "keep_checkpoints", "seed", "progress",
                 "microbatches")
_MESH_KEYS = ("data", "model")
_DISTRIBUTED_KEYS = ("initialize", "coordinator_address", "num_processes",
                     "process_id")
_INITIALIZE = {"auto": "auto", "true": True, "false": False}


class ConfigError(ValueError):
  """A config key or value that the trainer cannot use."""


def all_tasks() -> dict[str, Callable[..., Any]]:
  """Task name -> `make(data_config, *, process_index, process_count)`."""
  return {**getattr(tasks_lib, "TASKS", {}),
          "copy": synthetic_task.make_copy_task}


def _keys(section: Any, expected: tuple[str, ...], where: str) -> None:
  config_checks.check_keys(section, expected, f"config.{where}", ConfigError)


def _int(value: Any, name: str, minimum: int) -> None:
  config_checks.check_int(value, f"config.{name}", minimum, ConfigError)


def _float(value: Any, name: str, low: float, high: float = math.inf,
           *, low_open: bool = False, high_open: bool = True) -> None:
  ok = (not isinstance(value, bool) and isinstance(value, (int, float))
        and math.isfinite(value))
  if ok:
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
  if not ok:
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    raise ConfigError(f"config.{name} must be a number in {lo}{low}, {high}"
                      f"{hi}, got {value!r}")


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> None:
  config_checks.check_choice(value, f"config.{name}", allowed, ConfigError)


def parse_initialize(value: Any) -> bool | str:
  """Maps distributed.initialize ("auto", True/False or a string) to a value."""
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.lower() in _INITIALIZE:
    return _INITIALIZE[value.lower()]
  raise ConfigError("config.distributed.initialize must be 'auto', True or "
                    f"False, got {value!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every section; needs no devices. Raises ConfigError."""
  _keys(config, SECTIONS, "(top level)")
  _choice(config.model_builder, "model_builder", tuple(MODEL_BUILDERS))
  if (config.model_builder == "invertible_l2"
      and config.model.attention.kind != "l2"):
    raise ConfigError("config.model_builder='invertible_l2' needs "
                      "config.model.attention.kind='l2', got "
                      f"{config.model.attention.kind!r}")
  tasks = all_tasks()
  if config.task not in tasks:
    raise ConfigError(f"config.task={config.task!r} is not a known task; "
                      f"choose from {sorted(tasks)}")

  data = config.data
  if not isinstance(data, (Mapping, ml_collections.ConfigDict)):
    raise ConfigError("config.data must be a ConfigDict")
  for key in ("batch_size", "seq_len"):
    if key not in data:
      raise ConfigError(f"config.data.{key} is missing; every task needs it")
    _int(data[key], f"data.{key}", 1)

  try:
    model_config_lib.validate_model_config(config.model)
  except ValueError as e:
    raise ConfigError(f"bad model config: {e}") from None
  if config.model.max_len < data.seq_len:
    raise ConfigError(f"config.model.max_len ({config.model.max_len}) must be "
                      f">= config.data.seq_len ({data.seq_len})")

  opt = config.optimizer
  _keys(opt, _OPTIMIZER_KEYS, "optimizer")
  _choice(opt.name, "optimizer.name", OPTIMIZERS)
  _choice(opt.schedule, "optimizer.schedule", SCHEDULES)
  _float(opt.learning_rate, "optimizer.learning_rate", 0.0, low_open=True)
  _float(opt.b1, "optimizer.b1", 0.0, 1.0)
  _float(opt.b2, "optimizer.b2", 0.0, 1.0)
  _float(opt.eps, "optimizer.eps", 0.0)
  _float(opt.weight_decay, "optimizer.weight_decay", 0.0)
  _float(opt.grad_clip_norm, "optimizer.grad_clip_norm", 0.0)
  _int(opt.warmup_steps, "optimizer.warmup_steps", 0)
  _float(opt.final_lr_fraction, "optimizer.final_lr_fraction", 0.0, 1.0,
         high_open=False)

  tr = config.trainer
  _keys(tr, _TRAINER_KEYS, "trainer")
  _int(tr.steps, "trainer.steps", 1)
  _int(tr.log_every, "trainer.log_every", 1)
  for key in ("eval_every", "eval_batches", "checkpoint_every", "seed"):
    _int(tr[key], f"trainer.{key}", 0)
  _int(tr.keep_checkpoints, "trainer.keep_checkpoints", 1)
  _int(tr.microbatches, "trainer.microbatches", 1)
  if config.data.batch_size % tr.microbatches:
    raise ConfigError(
        f"config.data.batch_size ({config.data.batch_size}) must be a "
        f"multiple of config.trainer.microbatches ({tr.microbatches})")
  _choice(tr.progress, "trainer.progress", PROGRESS)
  if opt.schedule == "cosine" and opt.warmup_steps >= tr.steps:
    raise ConfigError(f"config.optimizer.warmup_steps ({opt.warmup_steps}) "
                      f"must be < config.trainer.steps ({tr.steps}) for the "
                      "cosine schedule")

  mesh = config.mesh
  _keys(mesh, _MESH_KEYS, "mesh")
  for key in _MESH_KEYS:
    if mesh[key] != -1:
      _int(mesh[key], f"mesh.{key}", 1)
  if mesh.data == -1 and mesh.model == -1:
    raise ConfigError("at most one of config.mesh.data and config.mesh.model "
                      "may be -1 (all remaining devices)")
  for key in _MESH_KEYS:
    if mesh[key] > 0:
      _check_mesh_divides(config, key, mesh[key])

  dist = config.distributed
  _keys(dist, _DISTRIBUTED_KEYS, "distributed")
  parse_initialize(dist.initialize)
  if dist.coordinator_address is not None and not isinstance(
      dist.coordinator_address, str):
    raise ConfigError("config.distributed.coordinator_address must be "
                      f"'host:port', got {dist.coordinator_address!r}")
  if dist.num_processes is not None:
    _int(dist.num_processes, "distributed.num_processes", 1)
  if dist.process_id is not None:
    _int(dist.process_id, "distributed.process_id", 0)
    if dist.num_processes is not None and dist.process_id >= dist.num_processes:
      raise ConfigError(f"config.distributed.process_id ({dist.process_id}) "
                        "must be < config.distributed.num_processes "
                        f"({dist.num_processes})")


def _check_mesh_divides(config: ml_collections.ConfigDict, axis: str,
                        size: int) -> None:
  if axis == "data" and config.data.batch_size % size:
    raise ConfigError(f"config.data.batch_size ({config.data.batch_size}) "
                      f"must be divisible by the data-parallel mesh size "
                      f"({size})")
  if axis == "model":
    for key in ("num_heads", "mlp_dim"):
      if config.model[key] % size:
        raise ConfigError(f"config.model.{key} ({config.model[key]}) must be "
                          f"divisible by the model-parallel mesh size "
                          f"({size})")


def resolve_mesh_shape(config: ml_collections.ConfigDict, num_devices: int,
                       num_local_devices: int, process_count: int
                       ) -> tuple[int, int]:
  """Returns (data, model) with -1 resolved; checks it fits the devices."""
  data, model = config.mesh.data, config.mesh.model
  fixed = (data if data > 0 else 1) * (model if model > 0 else 1)
  if num_devices % fixed:
    raise ConfigError(f"config.mesh (data={data}, model={model}) needs a "
                      f"multiple of {fixed} devices, but there are "
                      f"{num_devices}")
  if data == -1:
    data = num_devices // fixed
  if model == -1:
    model = num_devices // fixed
  if data * model != num_devices:
    raise ConfigError(f"config.mesh data*model = {data}*{model} = "
                      f"{data * model} must equal the number of devices "
                      f"({num_devices}); use -1 for one axis to fill it")
  if num_local_devices % model:
    raise ConfigError(f"config.mesh.model ({model}) must divide the devices "
                      f"per process ({num_local_devices}): model parallelism "
                      "stays inside one process")
  _check_mesh_divides(config, "data", data)
  _check_mesh_divides(config, "model", model)
  if config.data.batch_size % process_count:
    raise ConfigError(f"config.data.batch_size ({config.data.batch_size}) "
                      f"must be divisible by the number of processes "
                      f"({process_count})")
  return data, model


def to_jsonable(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved config as plain JSON types (for config.json)."""
  return config.to_dict()
