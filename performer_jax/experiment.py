"""The experiment: a config's sections, the rules that span them, and the
model builders.

`parse(config)` turns a ConfigDict (a config file plus command-line
overrides) into a checked `ExperimentConfig` without touching devices, so a
bad config fails before anything compiles; `resolve_mesh_shape` does the
checks that need the device count. This module sits above the schemas, the
models and the tasks (docs/contracts.md, "Layers").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import ml_collections

from performer_jax import linen
from performer_jax import tasks as tasks_lib
from performer_jax.lipschitz import model as invertible_model
from performer_jax.nnx import functional as pnnx_functional
from performer_jax.schemas import base as schema
from performer_jax.schemas import sections
from performer_jax.schemas.base import ConfigError

# config.model_api -> builder of config.model_builder="transformer": the
# Linen module, or the NNX one behind the same functional init/apply (the
# variables, and so the checkpoints, are the same in both).
MODEL_APIS: dict[str, Callable[..., Any]] = {
    "linen": linen.make_model,
    "nnx": pnnx_functional.make_model,
}

# config.model_builder -> build(model, *, vocab_size, causal).
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {
    "transformer": linen.make_model,
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
  # A warmup as long as the run is capped by it (optimizer.warmup_steps),
  # so `--config.trainer.steps=3` tries any config.
  for axis in sections.MeshConfig.AXES:
    size = getattr(cfg.mesh, axis)
    if size > 0:
      _check_mesh_divides(cfg, axis, size)


def _check_mesh_divides(cfg: ExperimentConfig, axis: str, size: int) -> None:
  if axis == "data" and cfg.data.batch_size % size:
    raise ConfigError(f"config.data.batch_size ({cfg.data.batch_size}) must "
                      f"be divisible by the data-parallel mesh size ({size})")
  if axis == "seq" and cfg.data.seq_len % size:
    raise ConfigError(f"config.data.seq_len ({cfg.data.seq_len}) must be "
                      f"divisible by the sequence-parallel mesh size "
                      f"config.mesh.seq ({size})")
  if axis == "model":
    for key in ("num_heads", "mlp_dim"):
      if getattr(cfg.model, key) % size:
        raise ConfigError(
            f"config.model.{key} ({getattr(cfg.model, key)}) must be "
            f"divisible by the model-parallel mesh size ({size})")


def resolve_mesh_shape(cfg: ExperimentConfig, num_devices: int,
                       num_local_devices: int, process_count: int
                       ) -> tuple[int, int, int]:
  """Returns (data, seq, model) with -1 resolved; checks it fits the
  devices."""
  sizes = {a: getattr(cfg.mesh, a) for a in sections.MeshConfig.AXES}
  fixed = math.prod(s for s in sizes.values() if s > 0)
  listing = ", ".join(f"{a}={s}" for a, s in sizes.items())
  if num_devices % fixed:
    raise ConfigError(f"config.mesh ({listing}) needs a multiple of {fixed} "
                      f"devices, but there are {num_devices}")
  sizes = {a: num_devices // fixed if s == -1 else s
           for a, s in sizes.items()}
  if math.prod(sizes.values()) != num_devices:
    product = "*".join(str(s) for s in sizes.values())
    raise ConfigError(f"config.mesh data*seq*model = {product} = "
                      f"{math.prod(sizes.values())} must equal the number of "
                      f"devices ({num_devices}); use -1 for one axis to "
                      "fill it")
  inner = sizes["seq"] * sizes["model"]
  if num_local_devices % inner:
    raise ConfigError(f"config.mesh.seq * config.mesh.model ({inner}) must "
                      f"divide the devices per process ({num_local_devices}):"
                      " sequence and model parallelism stay inside one "
                      "process")
  for axis, size in sizes.items():
    _check_mesh_divides(cfg, axis, size)
  if cfg.data.batch_size % process_count:
    raise ConfigError(f"config.data.batch_size ({cfg.data.batch_size}) "
                      f"must be divisible by the number of processes "
                      f"({process_count})")
  return sizes["data"], sizes["seq"], sizes["model"]


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


def parse_saved(saved: Mapping[str, Any]) -> ExperimentConfig:
  """A resolved config read back from a workdir or an exported model.

  Keys that performer-jax added after the file was written (e.g.
  `mesh.seq`, `model_api`) take their defaults; every other rule of `parse`
  holds.
  """
  task = saved.get("task")
  if task not in tasks_lib.TASKS:
    raise ConfigError(f"the saved config names task {task!r}; this "
                      f"performer-jax knows {sorted(tasks_lib.TASKS)}")

  data = saved.get("data")
  if isinstance(data, Mapping) and "strict_fasta" in data:
    # Written before data.strict_fasta (default False) became
    # data.skip_invalid (default False, the opposite).
    data = {k: v for k, v in data.items() if k != "strict_fasta"}
    data.setdefault("skip_invalid", not saved["data"]["strict_fasta"])
    saved = {**saved, "data": data}

  def merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
      out[key] = (merge(base[key], value) if isinstance(value, Mapping)
                  and isinstance(base.get(key), dict) else value)
    return out
  return parse(merge(base_config(task).to_dict(), saved))
