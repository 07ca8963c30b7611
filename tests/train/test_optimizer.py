"""Learning-rate schedules and the Adam/AdamW chain against hand formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.schemas import OptimizerConfig
from performer_jax.train import optimizer as optimizer_lib


def opt_config(**overrides):
  return OptimizerConfig(**overrides)


def test_cosine_schedule():
  schedule = optimizer_lib.make_schedule(
      opt_config(schedule="cosine", warmup_steps=10, learning_rate=1e-3,
                 final_lr_fraction=0.1), total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  # Halfway through the decay the cosine is at the mean of peak and end.
  assert float(schedule(60)) == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(1e-4, rel=1e-5)


def test_rsqrt_and_constant_schedules():
  rsqrt = optimizer_lib.make_schedule(
      opt_config(schedule="rsqrt", warmup_steps=100, learning_rate=2e-3), 1000)
  assert float(rsqrt(50)) == pytest.approx(1e-3)
  assert float(rsqrt(100)) == pytest.approx(2e-3)
  assert float(rsqrt(400)) == pytest.approx(2e-3 * math.sqrt(100 / 400))
  const = optimizer_lib.make_schedule(
      opt_config(schedule="constant", warmup_steps=4, learning_rate=1e-2), 50)
  assert [float(const(s)) for s in (0, 2, 4, 40)] == pytest.approx(
      [0.0, 5e-3, 1e-2, 1e-2])
  nowarm = optimizer_lib.make_schedule(
      opt_config(schedule="constant", warmup_steps=0), 50)
  assert float(nowarm(0)) == pytest.approx(1e-3)


def reference_adam_step(params, grads, *, lr, b1, b2, eps, wd, clip,
                        decoupled):
  """One step of (clipped) Adam from zero moments, written out by hand."""
  norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
  scale = min(1.0, clip / norm) if clip else 1.0
  out = {}
  for k, p in params.items():
    g = grads[k] * scale
    decay = wd * p if p.ndim >= 2 else 0.0 * p
    if not decoupled:
      g = g + decay
    m = (1 - b1) * g / (1 - b1)  # bias-corrected first moment
    v = (1 - b2) * g ** 2 / (1 - b2)
    update = m / (np.sqrt(v) + eps)
    if decoupled:
      update = update + decay
    out[k] = p - lr * update
  return out


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_one_step_matches_hand_formula(name):
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads = {k: rng.normal(size=v.shape).astype(np.float32) * 3
           for k, v in params.items()}
  cfg = opt_config(name=name, schedule="constant", warmup_steps=0,
                   learning_rate=0.01, weight_decay=0.1, grad_clip_norm=0.5,
                   eps=1e-3)
  tx, _ = optimizer_lib.make_optimizer(cfg, total_steps=10)
  state = tx.init(jax.tree_util.tree_map(jnp.asarray, params))
  updates, _ = tx.update(grads, state, params)
  got = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  want = reference_adam_step(params, grads, lr=0.01, b1=0.9, b2=0.98,
                             eps=1e-3, wd=0.1, clip=0.5,
                             decoupled=name == "adamw")
  for k in params:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5,
                               atol=1e-6)


def test_adam_and_adamw_differ_only_with_weight_decay():
  params = {"kernel": jnp.ones((2, 2))}
  grads = {"kernel": jnp.full((2, 2), 0.3)}
  results = {}
  for name in ("adam", "adamw"):
    for wd in (0.0, 0.5):
      cfg = opt_config(name=name, weight_decay=wd, schedule="constant",
                       warmup_steps=0)
      tx, _ = optimizer_lib.make_optimizer(cfg, 10)
      updates, _ = tx.update(grads, tx.init(params), params)
      results[name, wd] = np.asarray(updates["kernel"])
  np.testing.assert_allclose(results["adam", 0.0], results["adamw", 0.0])
  assert not np.allclose(results["adam", 0.5], results["adamw", 0.5])


def test_decay_mask_skips_vectors():
  mask = optimizer_lib.decay_mask({"w": jnp.ones((2, 3)), "b": jnp.ones(3),
                                   "s": jnp.ones((2, 2, 2))})
  assert mask == {"w": True, "b": False, "s": True}


def test_warmup_is_capped_by_the_run_length():
  """A trial run of a config made for thousands of steps reaches the peak
  at its last step; a warmup that fits is left alone."""
  cfg = opt_config(schedule="cosine", warmup_steps=100, learning_rate=1e-3)
  assert optimizer_lib.warmup_steps(cfg, 3) == 2
  assert optimizer_lib.warmup_steps(cfg, 1) == 0
  assert optimizer_lib.warmup_steps(cfg, 1000) == 100
  schedule = optimizer_lib.make_schedule(cfg, total_steps=3)
  assert [float(schedule(s)) for s in range(3)] == pytest.approx(
      [0.0, 5e-4, 1e-3])
