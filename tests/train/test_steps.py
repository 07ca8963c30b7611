"""Loss sums, metric summaries and the train step's redraw schedule."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from performer_jax.train import state as state_lib
from performer_jax.train import steps as steps_lib


def test_weighted_sums_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  weights = rng.integers(0, 2, size=(2, 5)).astype(np.float32)
  sums = jax.device_get(steps_lib.weighted_sums(
      jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), targets,
      weights))
  logits = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  assert sums["loss_sum"] == pytest.approx((nll * weights).sum(), rel=1e-5)
  assert sums["weight_sum"] == weights.sum()
  correct = (logits.argmax(-1) == targets) * weights
  assert sums["correct_sum"] == correct.sum()


def test_summarize():
  m = steps_lib.summarize({"loss_sum": 6.0, "weight_sum": 4.0,
                           "correct_sum": 1.0}, "byte")
  assert m["loss"] == 1.5 and m["accuracy"] == 0.25
  assert m["perplexity"] == pytest.approx(math.exp(1.5))
  assert m["bits_per_byte"] == pytest.approx(1.5 / math.log(2))


class ToyModel(nn.Module):
  """Embedding -> logits, plus a random_features collection."""
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, inputs_BL, *, key_mask_BL=None, deterministic=True):
    del key_mask_BL
    self.variable("random_features", "projection",
                  lambda: jax.random.normal(self.make_rng("random_features"),
                                            (3, 2)))
    x = nn.Embed(5, 4)(inputs_BL)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return nn.Dense(5)(x)


def redraw(variables, rng):
  shape = variables["random_features"]["projection"].shape
  return {"random_features": {"projection": jax.random.normal(rng, shape)}}


def test_train_step_redraws_on_schedule_and_is_reproducible():
  model = ToyModel()
  tx = optax.sgd(0.1)
  schedule = optax.constant_schedule(0.1)
  init = jax.jit(state_lib.make_init_fn(model, tx, 2, 3))
  step_fn = jax.jit(steps_lib.make_train_step(model, tx, schedule,
                                              redraw_every=3,
                                              redraw_fn=redraw))
  batch = {"inputs": jnp.ones((2, 3), jnp.int32),
           "targets": jnp.zeros((2, 3), jnp.int32),
           "weights": jnp.ones((2, 3), jnp.float32),
           "key_mask": jnp.ones((2, 3), jnp.bool_)}
  state = init(jax.random.PRNGKey(0))
  features, losses = [], []
  for _ in range(7):
    features.append(np.asarray(state.random_features["projection"]))
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss_sum"]))
  after = [np.asarray(state.random_features["projection"])]
  # changed[i]: step i replaced the features it was given.
  changed = [not np.array_equal(a, b)
             for a, b in zip(features, features[1:] + after)]
  # Redraws happen at steps 3 and 6 (never at step 0).
  assert changed == [False, False, False, True, False, False, True]
  assert int(state.step) == 7 and step_fn._cache_size() == 1
  # Same state in, same result out: per-step randomness is fold_in(rng, step).
  again = init(jax.random.PRNGKey(0))
  for i in range(7):
    again, metrics = step_fn(again, batch)
    assert float(metrics["loss_sum"]) == losses[i]
  np.testing.assert_array_equal(again.random_features["projection"], after[0])


def test_state_shardings_follow_logical_rules():
  class Sharded(nn.Module):
    @nn.compact
    def __call__(self, inputs_BL, *, key_mask_BL=None, deterministic=True):
      kernel = self.param("kernel", nn.with_logical_partitioning(
          nn.initializers.ones, ("embed", "mlp")), (4, 6))
      return jnp.ones(inputs_BL.shape + (6,)) @ kernel.T @ jnp.ones((4, 5))

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                           ("data", "model"))
  tx = optax.adam(1e-3)
  abstract, shardings = state_lib.state_shardings(
      Sharded(), tx, mesh, (("embed", None), ("mlp", "model")), 2, 3)
  assert abstract.params["kernel"].shape == (4, 6)
  spec = jax.sharding.PartitionSpec(None, "model")
  assert shardings.params["kernel"].spec == spec
  # Adam's moments inherit the parameter's sharding; the count is replicated.
  adam_state = shardings.opt_state[0]
  assert adam_state.mu["kernel"].spec == spec
  assert adam_state.nu["kernel"].spec == spec
  assert adam_state.count.spec == jax.sharding.PartitionSpec()
  assert state_lib.axis_rules({"a": "data"}) == (("a", "data"),)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_microbatches_give_the_full_batch_update(microbatches):
  model = ToyModel(dropout_rate=0.0)
  tx = optax.adam(0.1)
  schedule = optax.constant_schedule(0.1)
  init = jax.jit(state_lib.make_init_fn(model, tx, 4, 3))
  r = jax.random.split(jax.random.PRNGKey(1), 2)
  # Uneven weights per microbatch: each slice's loss must be normalized by
  # the whole batch's weight, not its own.
  batch = {"inputs": jax.random.randint(r[0], (4, 3), 0, 5),
           "targets": jax.random.randint(r[1], (4, 3), 0, 5),
           "weights": jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]],
                                jnp.float32),
           "key_mask": jnp.ones((4, 3), jnp.bool_)}
  full = jax.jit(steps_lib.make_train_step(model, tx, schedule))
  split = jax.jit(steps_lib.make_train_step(model, tx, schedule,
                                            microbatches=microbatches))
  state = init(jax.random.PRNGKey(0))
  for _ in range(2):  # twice: the second step sees different Adam moments
    state_full, metrics_full = full(state, batch)
    state_split, metrics_split = split(state, batch)
    for a, b in zip(jax.tree.leaves(state_full.params),
                    jax.tree.leaves(state_split.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss_sum", "weight_sum", "correct_sum", "grad_norm"):
      np.testing.assert_allclose(metrics_full[key], metrics_split[key],
                                 rtol=1e-5)
    assert not np.allclose(jax.tree.leaves(state.params)[0],
                           jax.tree.leaves(state_full.params)[0])
    state = state_full


def test_split_microbatches_interleaves_and_checks():
  batch = {"x": jnp.arange(12).reshape(6, 2)}
  parts = steps_lib.split_microbatches(batch, 3)["x"]
  assert parts.shape == (3, 2, 2)
  np.testing.assert_array_equal(parts[1], [[2, 3], [8, 9]])  # rows 1 and 4
  with pytest.raises(ValueError, match="multiple of config.trainer"):
    steps_lib.split_microbatches(batch, 4)
