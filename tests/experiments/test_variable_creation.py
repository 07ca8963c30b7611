"""Sparse variable creation (experiments/variable_creation) at tiny sizes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.variable_creation import run
from experiments.variable_creation import task

BRUTE_FORCE = {
    "parity": lambda b: b.sum(1) % 2,
    "majority": lambda b: 2 * b.sum(1) > b.shape[1],
    "and": lambda b: b.all(1),
}


@pytest.mark.parametrize("function", sorted(task.FUNCTIONS))
def test_labels_depend_only_on_the_hidden_subset(function):
  subset = task.hidden_subset(12, 3, seed=0)
  bits, y = task.sample(jax.random.PRNGKey(0), 512, 12, subset, function)
  bits, y = np.asarray(bits), np.asarray(y)
  np.testing.assert_array_equal(y, BRUTE_FORCE[function](bits[:, subset]))
  # Re-drawing every other bit never changes a label...
  other = np.setdiff1d(np.arange(12), subset)
  noise = np.asarray(jax.random.bernoulli(jax.random.PRNGKey(1), 0.5,
                                          (512, other.size)), np.int32)
  redrawn = bits.copy()
  redrawn[:, other] = noise
  np.testing.assert_array_equal(
      task.label(jnp.asarray(redrawn), subset, function), y)
  # ...while each hidden bit matters for some input.
  for i in subset:
    flipped = bits.copy()
    flipped[:, i] ^= 1
    assert (np.asarray(task.label(jnp.asarray(flipped), subset, function))
            != y).any()


def test_parity_has_no_single_bit_signal_and_majority_has():
  pair = np.array([1, 4])
  for pattern in itertools.product((0, 1), repeat=2):
    x = np.zeros((1, 6), np.int32)
    x[0, pair] = pattern
    assert int(task.label(jnp.asarray(x), pair, "parity")[0]) == sum(
        pattern) % 2
    assert int(task.label(jnp.asarray(x), pair, "and")[0]) == int(
        all(pattern))
  subset = task.hidden_subset(10, 3, seed=1)
  bits, y = task.sample(jax.random.PRNGKey(2), 8192, 10, subset, "parity")
  bits, y = np.asarray(bits), np.asarray(y)
  corr = [abs(np.corrcoef(bits[:, i], y)[0, 1]) for i in subset]
  assert max(corr) < 0.05, corr
  _, y = task.sample(jax.random.PRNGKey(2), 8192, 10, subset, "majority")
  assert min(abs(np.corrcoef(bits[:, i], np.asarray(y))[0, 1])
             for i in subset) > 0.3
  with pytest.raises(ValueError, match="unknown function"):
    task.label(jnp.asarray(bits), subset, "xor")


def test_attention_layer_learns_a_sparse_function():
  subset = task.hidden_subset(8, 2, seed=0)
  model = task.Classifier(length=8, width=16)
  assert model.heads == 1
  acc, variables = task.train_and_test(model, subset, 256, seed=0,
                                       function="and", steps=200,
                                       capacity=256, n_test=512)
  assert acc >= 0.95, acc
  norms = task.attention_norms(variables)
  assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms
  # Frobenius and (2,1) norms of the one head's W_Q W_K^T, from the kernels.
  p = variables["params"]["attention"]
  qk = np.einsum("ed,fd->ef", p["query"]["kernel"][:, 0],
                 p["key"]["kernel"][:, 0])
  np.testing.assert_allclose(norms["qk_fro"], np.linalg.norm(qk), rtol=1e-5)
  np.testing.assert_allclose(norms["qk_21"],
                             np.linalg.norm(qk, axis=0).sum(), rtol=1e-5)
  # Few samples are not enough: the task is learned, not given away.
  acc, _ = task.train_and_test(model, subset, 2, seed=0, function="and",
                               steps=200, capacity=256, n_test=512)
  assert acc < 0.9, acc


def test_cli_rejects_unknown_function():
  with pytest.raises(SystemExit):
    run.parse_args(["--function", "xor"])
  assert run.parse_args([]).function.split(",")[0] == "parity"
  assert run.parse_args([]).heads == 1


@pytest.mark.parametrize("attention", run.ATTENTIONS)
def test_attending_from_cls_alone_is_the_full_layer(attention):
  # The classifier reads only [CLS]: its one-query attention must equal row
  # 0 of the full self-attention layer, values and gradients.
  fields = dict(length=12, width=16, attention=attention, num_features=32)
  fast = task.Classifier(**fields)
  full = task.Classifier(**fields, cls_query_only=False)
  bits = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (8, 12)).astype(
      jnp.int32)
  variables = fast.init({"params": jax.random.PRNGKey(1),
                         "random_features": jax.random.PRNGKey(2)}, bits)
  np.testing.assert_allclose(fast.apply(variables, bits),
                             full.apply(variables, bits), atol=2e-5)
  loss = lambda m: lambda p: jnp.sum(
      m.apply({**variables, "params": p}, bits)[:, 1])
  grads = [jax.grad(loss(m))(variables["params"]) for m in (fast, full)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               *grads)
