"""The shared base of every training config.

Task config files call `get_base_config()` and fill in `task`, the task's
`data` keys and the model size. Every field the trainer reads exists here, so
a typo in a command-line override (`--config.trainer.step=10`) is rejected by
`config_flags` and a bad value is rejected by `performer_jax.train.config`
before anything compiles.
"""

import ml_collections
from ml_collections import config_dict

from performer_jax.models import default_model_config


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the base config with the Performer paper's training defaults."""
  config = ml_collections.ConfigDict()
  config.task = "copy"
  # "transformer" or "invertible_l2" (performer_jax/train/config.py).
  config.model_builder = "transformer"

  # Keys every task reads; tasks add their own keys (paths, vocab, ...).
  config.data = ml_collections.ConfigDict()
  config.data.batch_size = 32  # global batch, split over processes and "data"
  config.data.seq_len = 128
  config.data.seed = 0

  config.model = default_model_config()
  config.model.dropout_rate = 0.1

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"  # "adam" (L2 in the gradient) or "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.weight_decay = 0.1
  config.optimizer.grad_clip_norm = 0.5  # 0 disables clipping
  config.optimizer.schedule = "cosine"  # "cosine", "rsqrt" or "constant"
  config.optimizer.warmup_steps = 1000
  config.optimizer.final_lr_fraction = 0.0  # cosine: end lr / peak lr

  config.trainer = ml_collections.ConfigDict()
  config.trainer.steps = 100_000
  config.trainer.log_every = 100
  config.trainer.eval_every = 1000  # 0: only evaluate at the end
  config.trainer.eval_batches = 0  # 0: the whole eval source (or 50 if endless)
  config.trainer.checkpoint_every = 1000  # 0: only the final checkpoint
  config.trainer.keep_checkpoints = 3
  # Sequential slices per step with accumulated gradients: same update,
  # 1/microbatches of the activation memory (and a cache-sized working set).
  config.trainer.microbatches = 1
  config.trainer.seed = 0
  config.trainer.progress = "auto"  # "auto" (tqdm on a terminal), "tqdm", "log"

  # Device mesh: -1 takes all remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.model = 1

  config.distributed = ml_collections.ConfigDict()
  # "auto": initialize when the environment describes a multi-process job
  # (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, multi-host TPU) or a
  # coordinator_address is set; "true"/"false" force it on or off (a string
  # field, so `--config.distributed.initialize=true` works on the command
  # line).
  config.distributed.initialize = "auto"
  config.distributed.coordinator_address = config_dict.placeholder(str)
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)
  return config
