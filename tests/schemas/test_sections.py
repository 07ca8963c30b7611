"""Each config section checks its own values and names the key it rejects."""

import dataclasses

import ml_collections
import pytest

from performer_jax.schemas import AttentionConfig
from performer_jax.schemas import ConfigError
from performer_jax.schemas import DataConfig
from performer_jax.schemas import DistributedConfig
from performer_jax.schemas import MeshConfig
from performer_jax.schemas import ModelConfig
from performer_jax.schemas import OptimizerConfig
from performer_jax.schemas import TrainerConfig


def test_defaults_follow_the_paper():
  opt = OptimizerConfig()
  assert (opt.learning_rate, opt.b1, opt.b2, opt.eps) == (1e-3, 0.9, 0.98,
                                                          1e-9)
  assert (opt.grad_clip_norm, opt.weight_decay) == (0.5, 0.1)
  assert ModelConfig().dropout_rate == 0.1


@pytest.mark.parametrize("section,fields,message", [
    (ModelConfig, dict(num_heads=3), r"config.model.emb_dim \(128\).*"
     r"divisible by config.model.num_heads \(3\)"),
    (ModelConfig, dict(num_layers=0), r"config.model.num_layers must be an "
     r"integer >= 1, got 0"),
    (ModelConfig, dict(num_layers=True), r"num_layers must be an integer"),
    (ModelConfig, dict(dropout_rate=1.0), r"model.dropout_rate.*\[0.0, 1.0\)"),
    (ModelConfig, dict(dtype="float16"), r"model.dtype must be one of"),
    (ModelConfig, dict(remat="yes"), r"model.remat must be True or False"),
    (AttentionConfig, dict(kind="linear"),
     r"model.attention.kind.*\['softmax', 'favor', 'l2'\]"),
    (AttentionConfig, dict(kernel="cosine"), r"model.attention.kernel"),
    (AttentionConfig, dict(num_features=0),
     r"num_features is 0.*only kernel='relu'"),
    (AttentionConfig, dict(scaling="unit"), r"model.attention.scaling"),
    (AttentionConfig, dict(implementation="scan"),
     r"model.attention.implementation"),
    (AttentionConfig, dict(chunk_size=0), r"model.attention.chunk_size"),
    (OptimizerConfig, dict(name="sgd"),
     r"optimizer.name.*\['adam', 'adamw'\].*'sgd'"),
    (OptimizerConfig, dict(schedule="linear"), r"optimizer.schedule"),
    (OptimizerConfig, dict(learning_rate=-1.0),
     r"optimizer.learning_rate must be a number in \(0"),
    (OptimizerConfig, dict(b2=1.0), r"optimizer.b2"),
    (OptimizerConfig, dict(eps=float("nan")), r"optimizer.eps"),
    (TrainerConfig, dict(steps=0), r"trainer.steps.*>= 1"),
    (TrainerConfig, dict(log_every=0), r"trainer.log_every"),
    (TrainerConfig, dict(keep_checkpoints=0), r"trainer.keep_checkpoints"),
    (TrainerConfig, dict(progress="bar"), r"trainer.progress"),
    (TrainerConfig, dict(microbatches=0), r"trainer.microbatches.*>= 1"),
    (MeshConfig, dict(data=0), r"mesh.data"),
    (MeshConfig, dict(data=-1, model=-1), r"at most one"),
    (DistributedConfig, dict(initialize="maybe"),
     r"distributed.initialize must be 'auto', True or False"),
    (DistributedConfig, dict(num_processes=2, process_id=2),
     r"process_id \(2\) must be < .*num_processes \(2\)"),
    (DataConfig, dict(batch_size=0), r"config.data.batch_size.*>= 1"),
])
def test_bad_values_are_rejected(section, fields, message):
  with pytest.raises(ConfigError, match=message):
    section(**fields)


def test_parse_rejects_unknown_keys_and_builds_nested_sections():
  section = ModelConfig.defaults()
  section.attention.num_features = 32
  model = ModelConfig.parse(section)
  assert isinstance(model.attention, AttentionConfig)
  assert model.attention.num_features == 32
  section.attention.feature_count = 3
  with pytest.raises(ConfigError, match=r"unknown key "
                     r"config.model.attention.feature_count"):
    ModelConfig.parse(section)
  with pytest.raises(ConfigError, match="must be a section"):
    ModelConfig.parse(3)


def test_defaults_round_trip_and_accept_none_overrides():
  cfg = ModelConfig.defaults()
  assert ModelConfig.parse(cfg) == ModelConfig()
  # num_features may switch between an int and None (deterministic relu).
  cfg.attention.num_features = None
  cfg.attention.kernel = "relu"
  assert ModelConfig.parse(cfg).attention.num_features is None
  with pytest.raises(TypeError):
    cfg.attention.num_features = "many"
  dist = DistributedConfig.defaults()
  dist.process_id = 1  # a None placeholder that takes an int
  assert DistributedConfig.parse(dist).process_id == 1


def test_sections_are_frozen_and_hashable():
  model = ModelConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    model.num_layers = 3  # type: ignore[misc]
  assert hash(model) == hash(ModelConfig())
  assert isinstance(model.to_config_dict(), ml_collections.ConfigDict)


def test_distributed_mode():
  assert DistributedConfig(initialize="auto").mode == "auto"
  assert DistributedConfig(initialize="True").mode is True
  assert DistributedConfig(initialize=False).mode is False
  with pytest.raises(ConfigError):
    DistributedConfig(initialize=1)
