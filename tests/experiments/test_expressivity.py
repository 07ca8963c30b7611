"""Sparse-pattern expressivity (experiments/expressivity) at tiny sizes."""

import numpy as np

from experiments import common
from experiments.expressivity import patterns

EPS = 0.5


def test_pattern_has_k_nonzeros_per_row_and_column():
  for k in (1, 3):
    a = patterns.sparse_pattern(40, k, seed=k)
    assert ((a > 0).sum(0) == k).all() and ((a > 0).sum(1) == k).all()
    lo, hi = patterns.VALUE_RANGE
    assert a[a > 0].min() >= lo and a[a > 0].max() <= hi


def test_precision_check_accepts_and_rejects():
  a = patterns.sparse_pattern(16, 2, seed=0)
  on = a > 0
  good = np.where(on, np.log(np.where(on, a, 1)) + 3.0, 0.0)  # row shift
  assert patterns.within(good, a, EPS)
  bad = good.copy()
  i, j = 0, int(np.flatnonzero(~on[0])[0])
  bad[i, j] = good[i][on[0]].min() - 0.5  # off-pattern ratio e^-0.5 > eps
  assert not patterns.within(bad, a, EPS)
  bad = good.copy()
  bad[i, int(np.flatnonzero(on[0])[0])] += 0.5  # pattern ratio off by e^0.5
  assert not patterns.within(bad, a, EPS)


def test_construction_is_within_precision_at_the_d_it_reports():
  a = patterns.sparse_pattern(32, 2, seed=1)

  def ok(d):
    x1, x2 = patterns.construction(a, d, EPS, seed=d)
    return patterns.within(x1 @ x2.T, a, EPS)

  d = common.smallest(ok, 1, 8192, start=64)
  assert 8 < d <= 8192
  # The matrix the fixed self-attention layer computes from X, through the
  # library's softmax_attention, is within precision in every row...
  x1, x2 = patterns.construction(a, d, EPS, seed=d)
  m = patterns.attention_matrix(*patterns.inputs_and_weights(x1, x2))
  np.testing.assert_allclose(m.sum(1), 1, atol=1e-5)
  assert patterns.row_scores(m, a, EPS) == (1.0, 1.0)
  # ...and a far smaller d is not.
  x1, x2 = patterns.construction(a, 4, EPS, seed=0)
  assert not patterns.within(x1 @ x2.T, a, EPS)


def test_fit_reaches_precision_with_bounded_norms():
  a = patterns.sparse_pattern(32, 1, seed=2)
  x1, x2 = patterns.fitted(a, 8, EPS, seed=0, steps=300)
  assert patterns.within(x1 @ x2.T, a, EPS)
  rho = patterns.fit_radius(EPS, 1)
  assert np.linalg.norm(x1, axis=1).max() <= rho * (1 + 1e-5)
  assert np.linalg.norm(x2, axis=1).max() <= rho * (1 + 1e-5)


def test_favor_matrix_converges_to_exact():
  rng = np.random.default_rng(0)
  x1 = 0.4 * rng.standard_normal((16, 4)).astype(np.float32)
  x2 = 0.4 * rng.standard_normal((16, 4)).astype(np.float32)
  exact = patterns.attention_matrix(*patterns.inputs_and_weights(x1, x2))
  logits = x1.astype(np.float64) @ x2.T.astype(np.float64)
  ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(exact, ref, rtol=1e-5)
  # Mean error falls like m^(-1/2) (observed 0.012 at m=16, 0.001 at 4096).
  errs = [np.abs(patterns.favor_matrix(x1, x2, m, seed=0) - ref).mean()
          for m in (16, 4096)]
  assert errs[1] < 0.25 * errs[0] and errs[1] < 0.003, errs


def test_smallest_finds_the_threshold():
  for threshold in (1, 37, 500):
    for start in (None, 4, 1000):
      probes = []

      def ok(n, t=threshold):
        probes.append(n)
        return n >= t

      n = common.smallest(ok, 1, 1024, start=start)
      assert threshold <= n <= max(threshold * 1.25, threshold + 1)
      assert len(probes) < 20
  assert common.smallest(lambda n: False, 1, 64) == 65
