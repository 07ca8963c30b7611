"""The claims behind the experiments' figures, checked at tiny sizes.

One test per figure: approximation (Lemma 2, orthogonal features, positive vs
trig), scaling (the memory model used to skip exact attention) and SLiM
(exact gradients, less memory). Speed is never tested, only measured by the
scripts.
"""

import os

import jax
import numpy as np
import pytest

from experiments.approximation import kernel_mse
from experiments.approximation import run as approximation_run
from experiments.scaling import timing
from experiments.slim import run as slim_run

D, M = 16, 16


@pytest.fixture(scope="module")
def draws():
  return {orth: kernel_mse.draw_projections(seed, 20000, M, D,
                                            orthogonal=orth)
          for seed, orth in ((0, False), (1, True))}


def test_monte_carlo_matches_lemma2(draws):
  x, y = kernel_mse.pair_at_angle(D, 0.5, 2.0)
  theories = {}
  for kind in kernel_mse.KINDS:
    theory = kernel_mse.lemma2_mse(x, y, M, kind)
    mc, se = kernel_mse.mc_mse(x, y, draws[False], kind)
    theories[kind] = theory
    assert se < 0.02 * theory, kind  # enough draws for a 5% comparison
    assert abs(mc / theory - 1) < 0.05, (kind, mc, theory)
    # The estimators are unbiased: their mean is exp(x . y).
    est = kernel_mse.estimates(x, y, draws[False], kind)
    assert abs(est.mean() - np.exp(x @ y)) < 4 * est.std() / np.sqrt(
        est.size), kind
  # The three formulas differ here by far more than the tolerance, so
  # swapping any two would fail.
  vals = sorted(theories.values())
  assert vals[1] > 1.2 * vals[0] and vals[2] > 1.2 * vals[1]


def test_orthogonal_positive_features_beat_iid(draws):
  for angle in (0.3, 1.0, 1.6):
    x, y = kernel_mse.pair_at_angle(D, 0.5, angle)
    iid, se = kernel_mse.mc_mse(x, y, draws[False], "positive")
    orth, _ = kernel_mse.mc_mse(x, y, draws[True], "positive")
    assert orth < iid - 3 * se, (angle, orth, iid, se)


def test_positive_beats_trig_where_softmax_is_small(draws):
  x, y = kernel_mse.pair_at_angle(D, 0.75, 2.6)
  assert np.exp(x @ y) < 0.7
  pos, _ = kernel_mse.mc_mse(x, y, draws[False], "positive")
  trig, _ = kernel_mse.mc_mse(x, y, draws[False], "trig")
  assert pos < 0.2 * trig
  # ...and not everywhere: for nearly parallel x, y (SM large) trig wins.
  x, y = kernel_mse.pair_at_angle(D, 0.75, 0.5)
  pos, _ = kernel_mse.mc_mse(x, y, draws[False], "positive")
  trig, _ = kernel_mse.mc_mse(x, y, draws[False], "trig")
  assert trig < pos


def test_approximation_run_writes_outputs(tmp_path):
  att, ker = approximation_run.main([
      "--out", str(tmp_path), "--length", "64", "--features", "16,64",
      "--seeds", "2", "--draws", "500", "--angles", "3",
      "--input-scales", "0.5"])
  for name in ("attention_mse.csv", "kernel_mse.csv", "approximation.png"):
    assert os.path.getsize(tmp_path / name) > 0
  by = {(r["kernel"], r["projection"], r["m"]): r["mse_mean"] for r in att}
  assert len(by) == 3 * 3 * 2 and len(ker) == 3 * 3 * 2
  # More features, smaller error (orthogonal sqrt(d) positive features).
  assert by[("positive", "orth_sqrt_d", 64)] < by[("positive", "orth_sqrt_d",
                                                   16)]


def test_quadratic_memory_estimate_matches_compiled():
  # The estimate decides which exact-attention runs are skipped; it must be
  # close to what XLA actually allocates.
  shape = timing.Shape(batch=1, heads=2, head_dim=8, num_features=16)
  length = 512
  q, k, v, proj = timing.make_inputs(shape, length)
  for method in ("exact", "l2"):
    compiled = timing.fwd_bwd(method, 64).lower(q, k, v, proj).compile()
    got = timing.compiled_bytes(compiled)["total"]
    est = timing.estimate_quadratic_bytes(shape, length)
    assert 0.5 * est < got < 2 * est, (method, got, est)
  compiled = timing.fwd_bwd("favor", 64).lower(q, k, v, proj).compile()
  assert timing.compiled_bytes(compiled)["total"] < 0.5 * est


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