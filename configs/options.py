"""Parses task config arguments: `configs/<task>.py:<variant>,<attention>`.

Variants: "smoke" (seconds, used by the tests), "cpu" (a demo that learns
visibly on a 2-core CPU in minutes), "paper" (the paper's architecture, for
TPU/GPU). Attention overrides: "softmax" (exact), "favor" (FAVOR+ with
positive softmax features), "favor_relu" (FAVOR+ generalized ReLU attention)
"l2" (tied L2 attention) and "l2_invertible" (Kim et al.'s invertible
Transformer: contractive L2 attention and MLP in invertible residual blocks).
"""

from __future__ import annotations

import ml_collections

from configs import common
from performer_jax.tasks import DATA_CONFIGS

VARIANTS = ("smoke", "cpu", "paper")
ATTENTION = ("softmax", "favor", "favor_relu", "l2", "l2_invertible")


def parse(arg: str, task: str,
          default_attention: str = "favor") -> tuple[str, str]:
  """Returns (variant, attention) from "cpu,favor_relu"-style arguments."""
  options = [a.strip() for a in (arg or "").split(",") if a.strip()]
  unknown = sorted(set(options) - set(VARIANTS) - set(ATTENTION))
  if unknown:
    raise ValueError(
        f"unknown {task} config option(s) {unknown}: choose one variant from "
        f"{list(VARIANTS)} and optionally one attention from "
        f"{list(ATTENTION)}, e.g. configs/{task}.py:cpu,favor_relu")
  variants = [o for o in options if o in VARIANTS]
  kinds = [o for o in options if o in ATTENTION]
  if len(variants) > 1 or len(kinds) > 1:
    raise ValueError(f"{task} config takes at most one variant and one "
                     f"attention kind, got {options}")
  return (variants[0] if variants else "cpu",
          kinds[0] if kinds else default_attention)


def set_attention(model: ml_collections.ConfigDict, kind: str) -> None:
  """Points `model.attention` at one of ATTENTION."""
  if kind not in ATTENTION:
    raise ValueError(f"attention must be one of {ATTENTION}, got {kind!r}")
  model.attention.kind = ("favor" if kind.startswith("favor") else
                          "l2" if kind.startswith("l2") else kind)
  model.attention.kernel = "relu" if kind == "favor_relu" else "softmax"


def set_model(model: ml_collections.ConfigDict, *, num_layers: int,
              num_heads: int, emb_dim: int, mlp_dim: int, max_len: int,
              num_features: int, chunk_size: int = 64,
              dropout_rate: float = 0.1) -> None:
  model.num_layers = num_layers
  model.num_heads = num_heads
  model.emb_dim = emb_dim
  model.mlp_dim = mlp_dim
  model.max_len = max_len
  model.dropout_rate = dropout_rate
  model.attention.num_features = num_features
  model.attention.chunk_size = chunk_size


def build(task: str, arg: str, *, paper_model: dict,
          paper_steps: int, paper_warmup: int) -> ml_collections.ConfigDict:
  """The config of a real-data task for `arg` = "<variant>[,<attention>]".

  smoke and cpu sizes are shared by every task; `paper_model` gives the
  paper's architecture (set_model keywords), trained with bf16 compute,
  scan over layers and remat.
  """
  variant, attention = parse(arg, task)
  config = common.get_base_config()
  config.task = task
  config.data = DATA_CONFIGS[task](variant)
  seq_len = config.data.seq_len
  t = config.trainer
  if variant == "smoke":
    set_model(config.model, num_layers=1, num_heads=2, emb_dim=32,
              mlp_dim=64, max_len=seq_len, num_features=16, chunk_size=16,
              dropout_rate=0.0)
    config.optimizer.warmup_steps = 2
    t.steps, t.log_every, t.eval_every, t.checkpoint_every = 6, 2, 6, 6
  elif variant == "cpu":
    # No dropout or weight decay: 1000 steps are far from overfitting.
    set_model(config.model, num_layers=2, num_heads=4, emb_dim=128,
              mlp_dim=512, max_len=seq_len, num_features=64, chunk_size=64,
              dropout_rate=0.0)
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.0
    t.steps, t.log_every, t.eval_every, t.checkpoint_every = 1000, 50, 250, 250
  else:
    set_model(config.model, max_len=seq_len, chunk_size=128,
              dropout_rate=0.1, **paper_model)
    config.model.scan_layers = True
    config.model.remat = True
    config.model.dtype = "bfloat16"
    config.optimizer.warmup_steps = paper_warmup
    t.steps, t.log_every, t.eval_every, t.checkpoint_every = (
        paper_steps, 100, 5000, 5000)
  set_attention(config.model, attention)
  if attention == "l2_invertible":
    config.model_builder = "invertible_l2"
    config.model.scan_layers = False
  return config
