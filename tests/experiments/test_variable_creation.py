"""Sparse variable creation (experiments/variable_creation) at tiny sizes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.variable_creation import task


def test_labels_depend_only_on_the_hidden_subset():
  subset = task.hidden_subset(12, 3, seed=0)
  bits, y = task.sample(jax.random.PRNGKey(0), 512, 12, subset)
  bits, y = np.asarray(bits), np.asarray(y)
  # Brute force: strict majority of the three hidden bits.
  np.testing.assert_array_equal(y, (bits[:, subset].sum(1) >= 2))
  # Re-drawing every other bit never changes a label...
  other = np.setdiff1d(np.arange(12), subset)
  noise = np.asarray(jax.random.bernoulli(jax.random.PRNGKey(1), 0.5,
                                          (512, other.size)), np.int32)
  redrawn = bits.copy()
  redrawn[:, other] = noise
  np.testing.assert_array_equal(task.label(jnp.asarray(redrawn), subset), y)
  # ...while each hidden bit matters for some input.
  for i in subset:
    flipped = bits.copy()
    flipped[:, i] ^= 1
    assert (np.asarray(task.label(jnp.asarray(flipped), subset)) != y).any()
  # s = 2 is AND; the labels are the function of all 2^s patterns.
  pair = np.array([1, 4])
  for pattern in itertools.product((0, 1), repeat=2):
    x = np.zeros((1, 6), np.int32)
    x[0, pair] = pattern
    assert int(task.label(jnp.asarray(x), pair)[0]) == int(all(pattern))


def test_attention_layer_learns_a_sparse_function():
  subset = task.hidden_subset(8, 2, seed=0)
  model = task.Classifier(length=8, width=16)
  acc, variables = task.train_and_test(model, subset, 256, seed=0,
                                       steps=200, capacity=256, n_test=512)
  assert acc >= 0.95, acc
  qk, vo = task.attention_norms(variables)
  assert np.isfinite(qk) and qk > 0 and vo > 0
  # Few samples are not enough: the task is learned, not given away.
  acc, _ = task.train_and_test(model, subset, 2, seed=0, steps=200,
                               capacity=256, n_test=512)
  assert acc < 0.9, acc
