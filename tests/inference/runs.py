"""Tiny trained runs of every task, shared by the inference tests: one
training step each, so the loaded weights are a real checkpoint."""

import functools
import os
import tempfile

from performer_jax.configs import pixel_lm
from performer_jax.configs import protein_lm
from performer_jax.configs import protein_mlm
from performer_jax.configs import text_lm
from performer_jax.train import trainer

CONFIGS = {"protein_lm": protein_lm, "protein_mlm": protein_mlm,
           "text_lm": text_lm, "pixel_lm": pixel_lm}


def tiny_config(task: str, attention: str):
  config = CONFIGS[task].get_config(f"smoke,{attention}")
  config.model.num_layers, config.model.num_heads = 1, 2
  config.model.emb_dim, config.model.mlp_dim = 16, 32
  config.data.batch_size = 2
  if task == "pixel_lm":  # whole 28x28 images, so samples are images
    config.data.seq_len = config.model.max_len = 784
  config.trainer.steps = 1
  config.optimizer.warmup_steps = 0
  config.trainer.eval_every = 0
  config.trainer.progress = "log"
  return config


@functools.lru_cache(maxsize=None)
def trained(task: str, attention: str = "favor") -> str:
  """The workdir of a one-step run (created once per test process)."""
  workdir = os.path.join(tempfile.mkdtemp(prefix="inference-"),
                         f"{task}-{attention}")
  trainer.train_and_evaluate(tiny_config(task, attention), workdir)
  return workdir
