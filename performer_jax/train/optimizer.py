"""The optax optimizer and learning-rate schedule from `config.optimizer`.

Defaults (schemas/sections.py) follow the Performer paper: Adam(0.9, 0.98,
1e-9), peak learning rate 1e-3, gradient clipping at global norm 0.5 and
weight decay 0.1. "adam" adds weight decay to the gradient before Adam's
scaling (Adam + L2); "adamw" decouples it, `param -= lr * wd * param`
(Loshchilov & Hutter), as the paper's flax.optim.Adam does. Weight decay
only applies to arrays with ndim >= 2 (kernels and embeddings), not to
biases or LayerNorm scales.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from performer_jax.schemas.sections import OptimizerConfig


def warmup_steps(opt_config: OptimizerConfig, total_steps: int) -> int:
  """The warmup a run of `total_steps` gets: `optimizer.warmup_steps`,
  capped at `total_steps - 1` so that the run's last step reaches the peak
  (a short trial run, `trainer.steps=3`, of a config made for thousands of
  steps). The trainer logs the cap."""
  return max(min(opt_config.warmup_steps, total_steps - 1), 0)


def make_schedule(opt_config: OptimizerConfig,
                  total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then the configured decay.

  cosine:   cosine decay to `final_lr_fraction * peak` at `total_steps`.
  rsqrt:    `peak * sqrt(warmup / step)` after warmup (Transformer style).
  constant: the peak after warmup.
  The warmup is `warmup_steps(opt_config, total_steps)`.
  """
  peak = opt_config.learning_rate
  warmup = warmup_steps(opt_config, total_steps)
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * opt_config.final_lr_fraction)
  if opt_config.schedule == "rsqrt":
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      warm = jnp.maximum(jnp.float32(warmup), 1.0)
      ramp = jnp.minimum(step / warm, 1.0) if warmup else 1.0
      return peak * ramp * jnp.sqrt(warm / jnp.maximum(step, warm))
    return rsqrt
  # "constant" (OptimizerConfig admits no other name).
  if warmup == 0:
    return optax.constant_schedule(peak)
  return optax.linear_schedule(0.0, peak, warmup)


def decay_mask(params: Any) -> Any:
  """True for arrays that get weight decay: kernels and embeddings."""
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(opt_config: OptimizerConfig, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) for `config.optimizer`."""
  schedule = make_schedule(opt_config, total_steps)
  wd = opt_config.weight_decay
  parts = []
  if opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  adam = optax.scale_by_adam(b1=opt_config.b1, b2=opt_config.b2,
                             eps=opt_config.eps)
  if opt_config.name == "adam":
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
    parts.append(adam)
  else:  # "adamw"
    parts.append(adam)
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
