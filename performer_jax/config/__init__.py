"""Typed config sections: one frozen dataclass per section, written once.

  schema.py      the Section mechanism (parse, defaults, value checks)
  sections.py    attention, model, optimizer, trainer, mesh, distributed,
                 and the base of every task's data section
  experiment.py  the whole experiment, the cross-section rules and the
                 model builders (import it explicitly: it loads the tasks)
"""

from performer_jax.config.schema import ConfigError
from performer_jax.config.schema import Section
from performer_jax.config.sections import AttentionConfig
from performer_jax.config.sections import DataConfig
from performer_jax.config.sections import DistributedConfig
from performer_jax.config.sections import MeshConfig
from performer_jax.config.sections import ModelConfig
from performer_jax.config.sections import OptimizerConfig
from performer_jax.config.sections import TrainerConfig

__all__ = [
    "AttentionConfig", "ConfigError", "DataConfig", "DistributedConfig",
    "MeshConfig", "ModelConfig", "OptimizerConfig", "Section",
    "TrainerConfig",
]
