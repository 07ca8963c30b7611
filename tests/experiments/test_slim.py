"""The SLiM figure's claims: exact gradients, less memory."""

import jax
import numpy as np

from experiments.slim import run as slim_run


def _slim_model(layers, length):
  args = slim_run.parse_args(["--width", "16", "--heads", "2", "--features",
                              "16", "--layers", str(layers), "--vocab", "11"])
  params = slim_run.init_params(jax.random.PRNGKey(0), args)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, length), 0, 11)
  return params, tokens


def test_slim_training_step_matches_autodiff():
  # Two layers: the second layer's dq/dk/dv flow back through the first.
  params, tokens = _slim_model(layers=2, length=100)  # 100 % 16 != 0
  outs = {impl: slim_run.make_step(impl, "softmax", 16)(params, tokens)
          for impl in slim_run.IMPLEMENTATIONS}
  # The losses sum the same terms in another order (float32).
  np.testing.assert_allclose(outs["slim"][1], outs["autodiff"][1], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(outs["autodiff"][2]),
                  jax.tree_util.tree_leaves(outs["slim"][2])):
    np.testing.assert_allclose(b, a, rtol=0,
                               atol=1e-5 * float(np.abs(a).max() + 1e-30))


def test_slim_attention_needs_less_memory():
  """The claim of the SLiM figure: the attention layer's fwd+bwd memory is
  several times smaller with the recomputing backward, at every chunk size,
  while autodiff's grows with C (it stores each chunk's [C, C] scores)."""
  args = slim_run.parse_args(["--width", "16", "--heads", "2", "--features",
                              "16", "--layers", "1", "--vocab", "11"])
  temp = {(impl, c): slim_run.attention_temp_bytes(impl, args, 1024, c)
          for impl in ("autodiff", "slim") for c in (32, 256)}
  for c in (32, 256):
    assert temp["slim", c] < 0.5 * temp["autodiff", c], temp
  assert temp["autodiff", 256] > temp["autodiff", 32], temp
