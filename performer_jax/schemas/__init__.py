"""Typed config schemas: one frozen dataclass per config section.

  base.py      the Section mechanism (parse, defaults, value checks)
  sections.py  attention, model, optimizer, trainer, mesh, distributed,
               and the base of every task's data section

The whole experiment (tasks, builders, cross-section rules) is
`performer_jax.experiment`, a layer above.
"""

from performer_jax.schemas.base import ConfigError
from performer_jax.schemas.base import Section
from performer_jax.schemas.sections import AttentionConfig
from performer_jax.schemas.sections import DataConfig
from performer_jax.schemas.sections import DistributedConfig
from performer_jax.schemas.sections import MeshConfig
from performer_jax.schemas.sections import ModelConfig
from performer_jax.schemas.sections import OptimizerConfig
from performer_jax.schemas.sections import TrainerConfig

__all__ = [
    "AttentionConfig", "ConfigError", "DataConfig", "DistributedConfig",
    "MeshConfig", "ModelConfig", "OptimizerConfig", "Section",
    "TrainerConfig",
]
