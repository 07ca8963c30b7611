"""Tiny runs shared by tests: trained runs of every task for the inference
tests (one step each, so the loaded weights are a real checkpoint), and
copy-task trainers for the training tests (built once per variant and
attention kind, so each model compiles once per worker)."""

import functools
import os
import tempfile

from performer_jax.configs import copy as copy_task
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


COPY_STEPS = 12
_COPY_TRAINERS = {}


def copy_config(variant, kind):
  """The copy task's smoke config for `variant` ("causal" or "mlm") and
  attention `kind`: COPY_STEPS steps, checkpoints every 4, redraws every 5."""
  options = "smoke," + kind + (",mlm" if variant == "mlm" else "")
  config = copy_task.get_config(options)
  config.trainer.steps = COPY_STEPS
  config.trainer.log_every = 3
  config.trainer.eval_every = 6
  config.trainer.checkpoint_every = 4
  config.trainer.keep_checkpoints = 2
  config.trainer.progress = "log"
  config.optimizer.learning_rate = 3e-3
  config.model.attention.redraw_every = 5
  return config


def copy_trainer(variant, kind):
  """A `Trainer` of `copy_config(variant, kind)`, shared within a process."""
  if (variant, kind) not in _COPY_TRAINERS:
    _COPY_TRAINERS[variant, kind] = trainer.Trainer(copy_config(variant,
                                                                kind))
  return _COPY_TRAINERS[variant, kind]

