"""The whole experiment config: its sections, the rules that span them, and
the model builders.

`parse(config)` turns an ml_collections ConfigDict (a config file plus
command-line overrides) into an `ExperimentConfig` once: every section
checks itself, then `validate` applies the cross-section rules. Nothing
needs devices, so a bad config fails in milliseconds, before anything is
compiled or written. `resolve_mesh_shape` does the checks that need the
device count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import ml_collections

from performer_jax import models
from performer_jax import tasks as tasks_lib
from performer_jax.config import schema
from performer_jax.config import sections
from performer_jax.config.schema import ConfigError
from performer_jax.lipschitz import model as invertible_model
from performer_jax.nnx import functional as pnnx_functional

# config.model_api -> builder of config.model_builder="transformer": the
# Linen module, or the NNX one behind the same functional init/apply (the
# variables, and so the checkpoints, are the same in both).
MODEL_APIS: dict[str, Callable[..., Any]] = {
    "linen": models.make_model,
    "nnx": pnnx_functional.make_model,
}

# config.model_builder -> build(model, *, vocab_size, causal).
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {
    "transformer": models.make_model,
    # Kim et al.'s invertible L2 Transformer: contractive (c = 0.9 in the
    # 2-norm) L2 attention and MLP branches in x + g(x) residual blocks.
    "invertible_l2": functools.partial(invertible_model.make_invertible_model,
                                       c=0.9, norm="2"),
}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(schema.Section):
  """A training run: the task and its data, the model, the optimizer, the
  trainer loop, the device mesh and the multi-process set-up."""
  task: str = "copy"
  model_builder: str = "transformer"
  model_api: str = "linen"
  data: sections.DataConfig = dataclasses.field(
      default_factory=lambda: tasks_lib.TASKS["copy"].variant_data("cpu"))
  model: sections.ModelConfig = dataclasses.field(
      default_factory=sections.ModelConfig)
  optimizer: sections.OptimizerConfig = dataclasses.field(
      default_factory=sections.OptimizerConfig)
  trainer: sections.TrainerConfig = dataclasses.field(
      default_factory=sections.TrainerConfig)
  mesh: sections.MeshConfig = dataclasses.field(
      default_factory=sections.MeshConfig)
  distributed: sections.DistributedConfig = dataclasses.field(
      default_factory=sections.DistributedConfig)

  def check(self) -> None:
    self._choice("task", sorted(tasks_lib.TASKS))
    self._choice("model_builder", tuple(MODEL_BUILDERS))
    self._choice("model_api", tuple(MODEL_APIS))
    if not isinstance(self.data, tasks_lib.TASKS[self.task].data):
      self._fail("data", f"the data section of task {self.task!r}")
    validate(self)

  @classmethod
  def parse(cls, section: Any, **fixed: Any) -> "ExperimentConfig":
    """Builds the config; `config.data` is read with the task's schema."""
    if isinstance(section, ExperimentConfig):
      return section
    mapping = schema.as_mapping(section, "config")
    task = mapping.get("task", cls.task)
    if task not in tasks_lib.TASKS:
      raise ConfigError(f"config.task={task!r} is not a known task; choose "
                        f"from {sorted(tasks_lib.TASKS)}")
    data = tasks_lib.TASKS[task].data.parse(mapping.get("data", {}))
    return super().parse(mapping, data=data, **fixed)

  @property
  def task_spec(self) -> tasks_lib.Task:
    return tasks_lib.TASKS[self.task]

  def build_model(self, *, vocab_size: int, causal: bool,
                  api: str | None = None, **kwargs):
    """The model of `model_builder` for this config's model section, in
    `api` ("linen" or "nnx"; default: `model_api`)."""
    api = self.model_api if api is None else api
    if self.model_builder == "transformer":
      build = MODEL_APIS[api]
    else:
      build = MODEL_BUILDERS[self.model_builder]
    return build(self.model, vocab_size=vocab_size, causal=causal, **kwargs)


def validate(cfg: ExperimentConfig) -> None:
  """The rules that span sections. Raises ConfigError."""
  model, data, trainer = cfg.model, cfg.data, cfg.trainer
  if cfg.model_builder == "invertible_l2":
    invertible_model.check_model(model)
  if cfg.model_api != "linen" and cfg.model_builder != "transformer":
    raise ConfigError(f"config.model_api={cfg.model_api!r} builds the "
                      "Transformer only; config.model_builder="
                      f"{cfg.model_builder!r} needs model_api='linen'")
  if model.max_len < data.seq_len:
    raise ConfigError(f"config.model.max_len ({model.max_len}) must be >= "
                      f"config.data.seq_len ({data.seq_len})")
  if data.batch_size % trainer.microbatches:
    raise ConfigError(
        f"config.data.batch_size ({data.batch_size}) must be a multiple of "
        f"config.trainer.microbatches ({trainer.microbatches})")
  if (cfg.optimizer.schedule == "cosine"
      and cfg.optimizer.warmup_steps >= trainer.steps):
    raise ConfigError(
        f"config.optimizer.warmup_steps ({cfg.optimizer.warmup_steps}) must "
        f"be < config.trainer.steps ({trainer.steps}) for the cosine schedule")
  for axis in sections.MeshConfig.AXES:
    size = getattr(cfg.mesh, axis)
    if size > 0:
      _check_mesh_divides(cfg, axis, size)


def _check_mesh_divides(cfg: ExperimentConfig, axis: str, size: int) -> None:
  if axis == "data" and cfg.data.batch_size % size:
    raise ConfigError(f"config.data.batch_size ({cfg.data.batch_size}) must "
                      f"be divisible by the data-parallel mesh size ({size})")
  if axis == "model":
    for key in ("num_heads", "mlp_dim"):
      if getattr(cfg.model, key) % size:
        raise ConfigError(
            f"config.model.{key} ({getattr(cfg.model, key)}) must be "
            f"divisible by the model-parallel mesh size ({size})")


def resolve_mesh_shape(cfg: ExperimentConfig, num_devices: int,
                       num_local_devices: int, process_count: int
                       ) -> tuple[int, int]:
  """Returns (data, model) with -1 resolved; checks it fits the devices."""
  data, model = cfg.mesh.data, cfg.mesh.model
  fixed = (data if data > 0 else 1) * (model if model > 0 else 1)
  if num_devices % fixed:
    raise ConfigError(f"config.mesh (data={data}, model={model}) needs a "
                      f"multiple of {fixed} devices, but there are "
                      f"{num_devices}")
  data = num_devices // fixed if data == -1 else data
  model = num_devices // fixed if model == -1 else model
  if data * model != num_devices:
    raise ConfigError(f"config.mesh data*model = {data}*{model} = "
                      f"{data * model} must equal the number of devices "
                      f"({num_devices}); use -1 for one axis to fill it")
  if num_local_devices % model:
    raise ConfigError(f"config.mesh.model ({model}) must divide the devices "
                      f"per process ({num_local_devices}): model parallelism "
                      "stays inside one process")
  _check_mesh_divides(cfg, "data", data)
  _check_mesh_divides(cfg, "model", model)
  if cfg.data.batch_size % process_count:
    raise ConfigError(f"config.data.batch_size ({cfg.data.batch_size}) "
                      f"must be divisible by the number of processes "
                      f"({process_count})")
  return data, model


def base_config(task: str, variant: str = "cpu") -> ml_collections.ConfigDict:
  """The ConfigDict a config file starts from: every section's defaults and
  the task's data section for `variant`. Every field the trainer reads
  exists in it, so a mistyped override (`--config.trainer.step=10`) is
  rejected by config_flags."""
  if task not in tasks_lib.TASKS:
    raise ConfigError(f"unknown task {task!r}; choose from "
                      f"{sorted(tasks_lib.TASKS)}")
  cfg = ml_collections.ConfigDict()
  hints = ExperimentConfig.hints()
  for field in dataclasses.fields(ExperimentConfig):
    if field.name == "data":
      value = tasks_lib.TASKS[task].variant_data(variant).to_config_dict()
    elif field.name == "task":
      value = task
    elif issubclass(hints[field.name], schema.Section):
      value = hints[field.name].defaults()
    else:
      value = field.default
    setattr(cfg, field.name, value)
  return cfg


def parse(config: Any) -> ExperimentConfig:
  """`ExperimentConfig.parse`: a ConfigDict (or mapping) -> checked config."""
  return ExperimentConfig.parse(config)
