"""The trainer's loss and eval metrics, recomputed in NumPy.

On padded batches (holes in the key mask, left padding), the compiled
train step's loss sums and `Trainer.evaluate`'s metrics over several eval
batches must equal a float64 computation from `model.apply` outputs
(tests/helpers/reference.py: `weighted_metrics`), and differ from the same
computation without the key mask. The trainers (and their compiled steps)
are those of test_e2e.py.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from performer_jax.tasks import copy as copy_task
from tests.helpers import reference
from tests.helpers.runs import copy_trainer as get_trainer

# One worker runs test_e2e.py and this module: they share compiled trainers.
pytestmark = pytest.mark.xdist_group("train_e2e")
# Weighted positions per eval batch differ ~5x: a mean of per-batch means
# would differ from the token-weighted mean.
WEIGHT_RATES = (0.9, 0.2, 0.5)


@dataclasses.dataclass(frozen=True)
class PaddedBatches:
  """A finite source of random batches whose padding matters to a causal
  model too: each row is left-padded and has holes, so real queries have
  padded keys before them. Batch i weights about WEIGHT_RATES[i] of the
  real positions."""
  global_batch_size: int
  seq_len: int
  vocab_size: int

  @property
  def num_batches(self):
    return len(WEIGHT_RATES)

  def get_batch(self, step):
    rng = np.random.default_rng([7, step])
    shape = (self.global_batch_size, self.seq_len)
    pos = np.arange(self.seq_len)
    start = rng.integers(1, self.seq_len // 2, shape[0])[:, None]
    real = (pos >= start) & (rng.random(shape) < 0.8)
    real[np.arange(shape[0]), start[:, 0]] = True
    tokens = rng.integers(copy_task.NUM_SPECIAL, self.vocab_size, shape)
    weights = real & (rng.random(shape) < WEIGHT_RATES[step])
    return {"inputs": np.where(real, tokens, copy_task.PAD).astype(np.int32),
            "targets": rng.integers(copy_task.NUM_SPECIAL, self.vocab_size,
                                    shape).astype(np.int32),
            "weights": weights.astype(np.float32), "key_mask": real}


def variables(state):
  out = {"params": state.params}
  if state.random_features:
    out["random_features"] = state.random_features
  return out


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
  return jax.jit(lambda v, x, m: model.apply(v, x, key_mask_BL=m))


def model_logits(trainer, state, batches, masked=True):
  """`model.apply` on each batch (deterministic), with or without the key
  mask."""
  apply = jitted_apply(trainer.model)
  return [np.asarray(apply(variables(state), b["inputs"],
                           b["key_mask"] if masked else None))
          for b in batches]


def assert_metrics(got, want, weight_sum):
  """float32 sums of O(100) terms: 1e-5 relative. An argmax may flip at a
  float32 tie between two logits: at most one position's weight."""
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
  assert got["bits_per_token"] == pytest.approx(want["bits_per_token"],
                                                rel=1e-5)
  assert abs(got["accuracy"] - want["accuracy"]) <= 1.0 / weight_sum + 1e-9


@pytest.mark.parametrize("variant", ["causal", "mlm"])
def test_train_and_eval_metrics_equal_numpy(variant):
  trainer = get_trainer(variant, "softmax")
  cfg = trainer.config.data
  source = PaddedBatches(cfg.batch_size, cfg.seq_len, trainer.task.vocab_size)
  batches = [source.get_batch(i) for i in range(source.num_batches)]
  state = trainer.init_state()
  assert trainer.config.model.dropout_rate == 0.0  # apply == train forward

  # Train loss: each step's sums are those of the state it was given.
  # Step 0 has learning rate 0 (warmup): two steps, so the second moves.
  init = jax.device_get(state.params)
  for step in range(2):
    batch = batches[step]
    before = state
    state, sums = trainer.train_step(trainer.copy_state(before),
                                     trainer.to_global(source, batch))
    want = reference.weighted_metrics(
        model_logits(trainer, before, [batch]), [batch])
    for key in ("loss_sum", "weight_sum", "correct_sum"):
      assert float(sums[key]) == pytest.approx(want[key], rel=1e-5), key
    unmasked = reference.weighted_metrics(
        model_logits(trainer, before, [batch], masked=False), [batch])
    assert abs(unmasked["loss_sum"] - want["loss_sum"]) > (
        1e-3 * want["loss_sum"])
  moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(init))]
  assert min(moved) > 0, "every parameter must take the step"

  # Eval: every batch of the source, weighted by token.
  assert trainer.config.trainer.eval_batches == 0
  good_task = trainer.task
  trainer.task = dataclasses.replace(good_task, eval=source)
  try:
    got = trainer.evaluate(state)
  finally:
    trainer.task = good_task
  logits = model_logits(trainer, state, batches)
  want = reference.weighted_metrics(logits, batches)
  assert_metrics(got, want, want["weight_sum"])
  per_batch = np.mean([reference.weighted_metrics([z], [b])["loss"]
                       for z, b in zip(logits, batches)])
  assert abs(per_batch - want["loss"]) > 1e-3 * want["loss"]
  unmasked = reference.weighted_metrics(
      model_logits(trainer, state, batches, masked=False), batches)
  assert abs(unmasked["loss"] - want["loss"]) > 1e-3 * want["loss"]
  # The shared trainer's steps did not recompile for these batches.
  assert trainer.train_step._cache_size() == 1
  assert trainer.eval_step._cache_size() == 1
