"""Copy task: the second half of each sequence repeats the first.

A synthetic task that needs no data files, for smoke tests and debugging.
The decoder (causal) variant predicts the copied half token by token; the
encoder (masked LM) variant fills in masked tokens from their twin in the
other half. Exact attention learns it to ~99% eval accuracy; a model that
cannot attend stays near chance (1 / (vocab_size - 3)).

Launch (from the repository root):
  performer-train --config=configs/copy.py:smoke --workdir=/tmp/copy_smoke
  python -m performer_jax.train --config=configs/copy.py --workdir=/tmp/copy
  python -m performer_jax.train --config=configs/copy.py:mlm,l2 \
      --config.model.num_layers=4 --workdir=/tmp/copy_mlm

The argument is a comma-separated list of options:
  smoke:   tiny model, 20 steps, seconds on a CPU (accuracy stays low).
  mlm:     masked-LM (bidirectional encoder) variant instead of causal.
  softmax, favor, l2: the attention kind (default favor).

Expected results (measured on a shared 2-core CPU, 2 layers of width 128,
2000 steps, batch 32, length 64, causal; accuracy on the copied half):
  softmax:  eval accuracy 0.976 at step 1500, 0.986 at step 2000 (~4 min).
  favor (64 features, redrawn every 100 steps): 0.61 at step 1500, 0.48 at
            step 2000 (copying needs sharp attention, which 64 positive
            features approximate poorly; without redraws it learns slower
            still: 0.37 at step 1000).
Chance is 1 / 13 = 0.077. `smoke` finishes in under a minute and only checks
that everything runs (its loss falls but stays near chance).
"""

from configs import common

_OPTIONS = ("smoke", "mlm", "softmax", "favor", "l2")


def get_config(arg: str = ""):
  options = [a for a in arg.split(",") if a]
  unknown = sorted(set(options) - set(_OPTIONS))
  if unknown:
    raise ValueError(f"unknown copy config option(s) {unknown}; choose from "
                     f"{list(_OPTIONS)}, e.g. configs/copy.py:smoke,mlm")
  config = common.get_base_config()
  config.task = "copy"
  config.data.seq_len = 64
  config.data.batch_size = 32
  config.data.vocab_size = 16
  config.data.variant = "mlm" if "mlm" in options else "causal"
  config.data.mask_rate = 0.15
  config.data.num_eval_batches = 4

  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.emb_dim = 128
  config.model.mlp_dim = 256
  config.model.max_len = 64
  config.model.dropout_rate = 0.0
  config.model.attention.num_features = 64
  config.model.attention.chunk_size = 32
  config.model.attention.redraw_every = 100
  for kind in ("softmax", "favor", "l2"):
    if kind in options:
      config.model.attention.kind = kind

  config.optimizer.warmup_steps = 100
  config.optimizer.weight_decay = 0.0
  config.trainer.steps = 2000
  config.trainer.log_every = 100
  config.trainer.eval_every = 500
  config.trainer.checkpoint_every = 1000

  if "smoke" in options:
    config.data.seq_len = 16
    config.data.batch_size = 8
    config.data.num_eval_batches = 2
    config.model.num_layers = 1
    config.model.num_heads = 2
    config.model.emb_dim = 32
    config.model.mlp_dim = 64
    config.model.max_len = 16
    config.model.attention.num_features = 16
    config.model.attention.chunk_size = 8
    config.model.attention.redraw_every = 5
    config.optimizer.warmup_steps = 5
    config.trainer.steps = 20
    config.trainer.log_every = 5
    config.trainer.eval_every = 10
    config.trainer.checkpoint_every = 10
  return config
