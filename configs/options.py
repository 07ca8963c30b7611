"""Builds every task config from `<variant>[,<attention>][,<flag>...]`.

Variants (the same for every task; tasks adjust them):
  smoke   a 1-layer, width-32 model for a few steps: seconds (the tests)
  cpu     2 layers, width 128, 1000 steps: learns visibly on a 2-core CPU
  paper   the paper's architecture, bf16, scanned and rematerialized layers
Attention: softmax (exact), favor (FAVOR+, positive softmax features;
default), favor_relu (FAVOR+ generalized ReLU attention), l2 (tied L2
attention), l2_invertible (Kim et al.'s invertible Transformer: contractive
L2 attention and MLP in invertible residual blocks).

A config file is one `build(...)` call; the result is an ml_collections
ConfigDict whose every field exists in the typed schema
(performer_jax/config), so overrides on the command line are checked by
name and by value.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from performer_jax import experiment
from performer_jax.tasks import VARIANTS

ATTENTION = ("softmax", "favor", "favor_relu", "l2", "l2_invertible")
Overrides = Mapping[str, Any]  # "section.key" -> value

# Shared sizes; a task's `overrides` adjust them per variant.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "model.num_layers": 1, "model.num_heads": 2, "model.emb_dim": 32,
        "model.mlp_dim": 64, "model.dropout_rate": 0.0,
        "model.attention.num_features": 16, "model.attention.chunk_size": 16,
        "optimizer.warmup_steps": 2, "trainer.steps": 6,
        "trainer.log_every": 2, "trainer.eval_every": 6,
        "trainer.checkpoint_every": 6,
    },
    # No dropout or weight decay: 1000 steps are far from overfitting.
    "cpu": {
        "model.num_layers": 2, "model.num_heads": 4, "model.emb_dim": 128,
        "model.mlp_dim": 512, "model.dropout_rate": 0.0,
        "model.attention.num_features": 64, "model.attention.chunk_size": 64,
        "optimizer.warmup_steps": 100, "optimizer.weight_decay": 0.0,
        "trainer.steps": 1000, "trainer.log_every": 50,
        "trainer.eval_every": 250, "trainer.checkpoint_every": 250,
    },
    "paper": {
        "model.dropout_rate": 0.1, "model.attention.chunk_size": 128,
        "model.scan_layers": True, "model.remat": True,
        "model.dtype": "bfloat16", "trainer.log_every": 100,
        "trainer.eval_every": 5000, "trainer.checkpoint_every": 5000,
    },
}


def parse(arg: str, task: str, flags: tuple[str, ...] = ()
          ) -> tuple[str, str, list[str]]:
  """Returns (variant, attention, flags) from "cpu,favor_relu"-style text."""
  options = [a.strip() for a in (arg or "").split(",") if a.strip()]
  unknown = sorted(set(options) - set(VARIANTS) - set(ATTENTION) - set(flags))
  if unknown:
    extra = f" and the flags {list(flags)}" if flags else ""
    raise ValueError(
        f"unknown {task} config option(s) {unknown}: choose one variant from "
        f"{list(VARIANTS)}, optionally one attention from {list(ATTENTION)}"
        f"{extra}, e.g. {task}:cpu,favor_relu")
  variants = [o for o in options if o in VARIANTS]
  kinds = [o for o in options if o in ATTENTION]
  if len(variants) > 1 or len(kinds) > 1:
    raise ValueError(f"{task} config takes at most one variant and one "
                     f"attention kind, got {options}")
  return (variants[0] if variants else "cpu",
          kinds[0] if kinds else "favor",
          [o for o in options if o in flags])


def apply(config: ml_collections.ConfigDict, overrides: Overrides) -> None:
  """Sets "section.key" (or "section.sub.key") paths; each must exist."""
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise KeyError(f"config has no key {path!r}")
    node[leaf] = value


def set_attention(config: ml_collections.ConfigDict, kind: str) -> None:
  """Points the model at one of ATTENTION."""
  if kind not in ATTENTION:
    raise ValueError(f"attention must be one of {ATTENTION}, got {kind!r}")
  attention = config.model.attention
  attention.kind = ("favor" if kind.startswith("favor") else
                    "l2" if kind.startswith("l2") else kind)
  attention.kernel = "relu" if kind == "favor_relu" else "softmax"
  if kind == "l2_invertible":
    config.model_builder = "invertible_l2"
    config.model.scan_layers = False


def build(task: str, arg: str, *, paper: Overrides,
          overrides: Mapping[str, Overrides] | None = None,
          flags: Mapping[str, Overrides] | None = None
          ) -> ml_collections.ConfigDict:
  """The config of `task` for `arg` = "<variant>[,<attention>][,<flag>]".

  Args:
    task: a name in performer_jax.tasks.TASKS.
    arg: the text after the colon of `--config=<task>:<arg>`.
    paper: the paper variant's model size and schedule ("section.key" ->
      value), on top of PRESETS["paper"].
    overrides: variant -> task-specific changes to its preset.
    flags: extra options the task accepts (flag -> changes).
  """
  flags = dict(flags or {})
  variant, attention, chosen = parse(arg, task, tuple(flags))
  config = experiment.base_config(task, variant)
  apply(config, PRESETS[variant])
  if variant == "paper":
    apply(config, paper)
  config.model.max_len = config.data.seq_len
  apply(config, (overrides or {}).get(variant, {}))
  set_attention(config, attention)
  for flag in chosen:
    apply(config, flags[flag])
  return config
