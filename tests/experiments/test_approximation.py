"""The claims of the approximation figures at tiny sizes: Lemma 2's MSE,
orthogonal beating iid features, positive beating trig features. Speed is
never tested, only measured by the scripts."""

import os

import numpy as np
import pytest

from experiments.approximation import kernel_mse
from experiments.approximation import run as approximation_run

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
