"""The pieces `scripts/causal_breakdown.py` times compute what they claim.

The script's ratios are only evidence if its stripped-down pieces are the
chunked causal algorithm's matmuls; here each is checked against the
brute-force unnormalized product with the same (unstabilized) features.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import inputs

_PATH = os.path.join(inputs.REPO, "scripts", "causal_breakdown.py")
_spec = importlib.util.spec_from_file_location("causal_breakdown", _PATH)
breakdown = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(breakdown)

B, L, H, D, F, C = 2, 32, 2, 8, 16, 8


@pytest.fixture(scope="module")
def inputs():
  rq, rk, rv, rw = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (0.5 * jax.random.normal(r, (B, L, H, D)) for r in (rq, rk, rv))
  w_FD = jax.random.normal(rw, (F, D))
  return q, k, v, w_FD


def _brute(q, k, v, w_FD, causal, length=L):
  """sum_j [j <= i] phi(q_i) . phi(k_j) v_j in float64, as `[G, L, D]`."""
  heads_major = lambda x: jnp.swapaxes(x, 1, 2).reshape(B * H, length, D)
  x_q, x_k = heads_major(q) * D ** -0.25, heads_major(k) * D ** -0.25
  v_GLD = heads_major(v)
  qf = np.exp(np.asarray(x_q @ w_FD.T, np.float64))
  kf = np.exp(np.asarray(x_k @ w_FD.T, np.float64) -
              0.5 * np.sum(np.asarray(x_k, np.float64) ** 2, -1,
                           keepdims=True))
  scores = np.einsum("gif,gjf->gij", qf, kf)
  if causal:
    scores = scores * np.tril(np.ones((length, length)))
  return np.einsum("gij,gje->gie", scores, np.asarray(v_GLD, np.float64))


def _close(got, want):
  # float32 sums of signed terms: relative to the output's scale.
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-5 * np.max(np.abs(want)))


def _flat(out_GNCE):
  return np.asarray(out_GNCE).reshape(B * H, L, -1)


def test_bidir_plain_is_the_full_product(inputs):
  got = _flat(breakdown._bidir_plain(*inputs, C))
  _close(got, _brute(*inputs, causal=False))


def test_inter_plus_intra_is_the_causal_product(inputs):
  got = _flat(breakdown.PIECES["inter_plus_intra"](*inputs, C))
  _close(got, _brute(*inputs, causal=True))


def test_inter_without_prefix_sees_only_its_own_chunk(inputs):
  q, k, v, w_FD = inputs
  got = _flat(breakdown._inter(q, k, v, w_FD, C, prefix=False))
  want = np.concatenate(
      [_brute(q[:, n:n + C], k[:, n:n + C], v[:, n:n + C], w_FD,
              causal=False, length=C) for n in range(0, L, C)], axis=1)
  _close(got, want)


def test_prefix_is_exclusive():
  s = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3, 1)
  got = np.asarray(breakdown._exclusive_prefix(s))
  want = np.cumsum(np.asarray(s), axis=1) - np.asarray(s)
  np.testing.assert_array_equal(got, want)
