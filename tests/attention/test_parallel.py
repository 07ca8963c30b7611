"""Tests for the scan-free causal FAVOR+ (implementation="parallel"), the
summary operator it shares with sequence parallelism (summary.py), and the
seeds a sequence shard starts from.

test_favor.py and test_api.py run their brute-force, leak, causality and
padding tests on "parallel" too; test_sharded.py runs it on 8 devices.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from performer_jax.attention import api
from performer_jax.attention import autodiff
from performer_jax.attention import chunked
from performer_jax.attention import favor_attention
from performer_jax.attention import feature_maps
from performer_jax.attention import layout
from performer_jax.attention import pallas_favor
from performer_jax.attention import parallel
from performer_jax.attention import slim
from performer_jax.attention import summary
from tests.helpers import inputs


def square_features(x, projection):
  del projection
  return jnp.square(x)


def _assert_close(got, want, tol=1e-5):
  """Each leaf within tol of the largest |entry| of its reference: the same
  math summed in another order."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = max(float(jnp.max(jnp.abs(w))), 1e-30)
    np.testing.assert_allclose(g / scale, w / scale, atol=tol, rtol=0)


def _out_and_grads_fn(implementation, proj, **kw):
  """Jitted `(q, k, v) -> (out, (dq, dk, dv))`."""
  def loss(q, k, v):
    out = favor_attention(q, k, v, proj, causal=True,
                          implementation=implementation, **kw)
    # A non-uniform cotangent: every output element matters.
    return jnp.sum(jnp.exp(jnp.sin(3.0 * out))), out
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
  return lambda q, k, v: tuple(reversed(grad(q, k, v)))


def _out_and_grads(implementation, q, k, v, proj, **kw):
  return _out_and_grads_fn(implementation, proj, **kw)(q, k, v)


def _left_padded_mask(b, length):
  """Random key mask whose first 6 keys are padded in every row: the first
  chunks see no key (a running max of -inf)."""
  mask = inputs.qkv(b=b, length=length)[3]
  return mask & (jnp.arange(length) >= 6)[None]


@pytest.mark.parametrize("kernel,with_proj,masked", [
    ("softmax", True, True), ("relu", False, True),
    (square_features, False, False)])
def test_matches_autodiff_values_and_gradients(kernel, with_proj, masked):
  q, k, v, _, proj = inputs.qkv(length=21, scale=1.5)
  kw = dict(kernel=kernel, chunk_size=4,
            key_mask=_left_padded_mask(2, 21) if masked else None)
  proj = proj if with_proj else None
  parallel_fn = _out_and_grads_fn("parallel", proj, **kw)
  got = parallel_fn(q, k, v)
  _assert_close(got, _out_and_grads("autodiff", q, k, v, proj, **kw))
  if masked:
    # No key visible yet: output 0; padded keys get exactly no gradient.
    np.testing.assert_array_equal(got[0][:, :6], 0.0)
    np.testing.assert_array_equal(got[1][1][:, :6], 0.0)
    # Whatever padded keys and values hold, nothing changes.
    pad = ~kw["key_mask"][:, :, None, None]
    for junk in (jnp.nan, jnp.inf):
      poisoned = parallel_fn(q, jnp.where(pad, junk, k),
                             jnp.where(pad, junk, v))
      for a, b in zip(jax.tree.leaves(poisoned), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


def _lowered(implementation, length):
  q, k, v, _, proj = inputs.qkv(b=1, length=length, h=1, d=8, m=16)
  fn = lambda q, k, v: jnp.sum(jnp.sin(favor_attention(
      q, k, v, proj, causal=True, chunk_size=4,
      implementation=implementation)))
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(q, k, v)


def test_compiled_pass_has_no_loop():
  """Forward and backward: no `while` at all in the compiled HLO (the
  prefix is an unrolled log-depth network), so no trip count that grows
  with L. The check can fail: the SLiM pass has a loop of L/C steps each
  way."""
  assert "while" not in _lowered("parallel", 64).compile().as_text()
  assert _lowered("slim", 64).as_text().count("stablehlo.while") >= 2


def _residual_bytes(implementation, q, k, v, proj, mask):
  """Bytes that the forward pass keeps for the backward (the leaves of the
  VJP object), from shapes only."""
  fn = lambda q, k, v: favor_attention(q, k, v, proj, causal=True,
                                       chunk_size=16, key_mask=mask,
                                       implementation=implementation)
  shapes = jax.eval_shape(
      lambda q, k, v: jax.tree.leaves(jax.vjp(fn, q, k, v)[1]), q, k, v)
  return sum(x.size * x.dtype.itemsize for x in shapes)


def test_keeps_chunk_states_not_features():
  """SLiM's memory between forward and backward: q, k, v and the states
  entering each chunk, no feature tensor (autodiff keeps ~6x more here)."""
  q, k, v, mask, proj = inputs.qkv(b=1, length=256, h=2, d=8, m=32)
  kept = {impl: _residual_bytes(impl, q, k, v, proj, mask[:1])
          for impl in ("parallel", "slim", "autodiff")}
  assert 0 < kept["parallel"] <= 1.05 * kept["slim"], kept
  assert kept["parallel"] < 0.25 * kept["autodiff"], kept


def test_check_grads_and_jit_equals_eager():
  q, k, v, mask, proj = inputs.qkv(b=1, length=7, h=1, d=4, m=8)
  fn = functools.partial(favor_attention, projection=proj, causal=True,
                         key_mask=mask[:1], chunk_size=3,
                         implementation="parallel")
  call = lambda q, k, v: fn(q, k, v)
  check_grads(jax.jit(call), (q, k, v), order=1, modes=("rev",), atol=2e-2,
              rtol=2e-2)
  # Eager runs op by op, jit fuses: the same math in another float32 order.
  np.testing.assert_allclose(jax.jit(call)(q, k, v), call(q, k, v),
                             atol=1e-5)


def test_large_norms_stay_finite_and_match_slim():
  q, k, v, _, proj = inputs.qkv(b=1, length=24, d=16, m=32, scale=12.0)
  got = _out_and_grads("parallel", q, k, v, proj, chunk_size=8)
  for x in jax.tree.leaves(got):
    assert np.isfinite(x).all()
  _assert_close(got, _out_and_grads("slim", q, k, v, proj, chunk_size=8),
                1e-4)


def _random_summaries(rng, n, empty):
  """n summaries `(m [n, 2], S [n, 2, 3, 4])`; where `empty`, m = -inf and
  S = 0 (a segment with no unpadded key)."""
  r1, r2 = jax.random.split(rng)
  m = 5.0 * jax.random.normal(r1, (n, 2))
  s = jnp.abs(jax.random.normal(r2, (n, 2, 3, 4)))
  m = jnp.where(empty[:, None], -jnp.inf, m)
  return m, jnp.where(empty[:, None, None, None], 0.0, s)


def _absolute(m, s):
  """A summary in absolute terms, `S exp(m)` (float64, small m only)."""
  m = np.asarray(m, np.float64)
  return np.asarray(s, np.float64) * np.where(
      np.isfinite(m), np.exp(np.where(np.isfinite(m), m, 0.0)),
      0.0)[..., None, None]


def test_summary_operator_is_associative_with_an_identity():
  m, s = _random_summaries(jax.random.PRNGKey(0), 4,
                           jnp.array([False, True, False, False]))
  m, s = np.asarray(m), np.asarray(s)
  a, b, c, e = ((m[i], s[i]) for i in range(4))
  left = summary.combine(summary.combine(a, b), c)
  right = summary.combine(a, summary.combine(b, c))
  np.testing.assert_allclose(left[1], right[1], rtol=1e-6)
  np.testing.assert_array_equal(left[0], right[0])
  # Exactly the sum of the absolute summaries, whatever the order.
  np.testing.assert_allclose(
      _absolute(*summary.combine(c, a)), _absolute(*a) + _absolute(*c),
      rtol=1e-5)
  identity = (jnp.full_like(m[0], -jnp.inf), jnp.zeros_like(s[0]))
  for x in (a, b, e):
    got = summary.combine(identity, x)
    np.testing.assert_array_equal(got[0], x[0])
    np.testing.assert_allclose(got[1], x[1], rtol=1e-6)
  # Every weight is <= 1: nothing overflows even for huge maxima.
  big = summary.combine((m[0] + 1e4, s[0]), (m[2] - 1e4, s[2]))
  assert np.isfinite(big[1]).all()


@pytest.mark.parametrize("n", [1, 6, 17, 70])
def test_prefix_and_its_transpose_equal_brute_force_sums(n):
  """The two-level prefix against float64 sums in absolute terms: P_n =
  S0 + T_0 + ... + T_{n-1}, and its transpose dT_k = sum_{n>k} of dP_n
  scaled to T_k, dS0 likewise; N not a square (padded blocks), empty
  segments at the start and in the middle, maxima far apart."""
  empty = (jnp.arange(n) < 2) | (jnp.arange(n) == n // 2)
  m, t = _random_summaries(jax.random.PRNGKey(n), n, empty)
  m = jax.lax.cummax(m, axis=0) + 30.0 * jnp.arange(n)[:, None] % 7
  dp = jax.random.normal(jax.random.PRNGKey(2), t.shape)
  s0 = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 4))
  for m0 in (jnp.full((2,), -jnp.inf), jnp.array([-3.0, 20.0])):
    m_in, p = summary.exclusive_prefix(m, t, (m0, s0), 0)
    d_t, d_s0 = summary.exclusive_prefix_transpose(m, m0, dp, 0)
    seed = _absolute(m0, s0)
    want = np.cumsum(np.concatenate([seed[None], _absolute(m, t)[:-1]]), 0)
    np.testing.assert_allclose(_absolute(m_in, p), want, rtol=1e-5,
                               atol=1e-6 * np.abs(want).max())
    # dP_n is the cotangent of P_n relative to m_in_n: d(absolute P_n) =
    # dP_n exp(-m_in_n); an item with max m_k contributes exp(m_k) of it.
    scaled = np.asarray(dp, np.float64) * np.exp(
        -np.asarray(chunked.finite_or_zero(m_in), np.float64))[..., None,
                                                               None]
    later = np.cumsum(scaled[::-1], 0)[::-1]
    want_t = np.concatenate([later[1:], np.zeros_like(later[:1])])
    want_t = want_t * np.where(np.isfinite(np.asarray(m)), np.exp(
        np.where(np.isfinite(np.asarray(m)), np.asarray(m, np.float64),
                 0.0)), 0.0)[..., None, None]
    np.testing.assert_allclose(d_t, want_t, rtol=1e-4,
                               atol=1e-6 * np.abs(want_t).max())
    want_s0 = later[0] * (np.exp(np.asarray(m0, np.float64))[..., None, None]
                          if np.isfinite(m0).all() else 0.0)
    np.testing.assert_allclose(d_s0, want_s0, rtol=1e-4, atol=1e-8)


def _prepared(length, kernel, with_proj, masked):
  q, k, v, mask, proj = inputs.qkv(b=2, length=length, scale=1.5, seed=3)
  mask = mask & (jnp.arange(length) >= 6)[None] if masked else None
  flat = layout.flatten(q, k, v, mask)
  return (*layout.favor_inputs(flat), flat.key_mask_BS,
          proj if with_proj else None)


@pytest.mark.parametrize("core,kernel,with_proj,masked", [
    (parallel.causal, "softmax", True, True),
    (slim.causal, "relu", False, True),
    (autodiff.causal, "softmax_hyperbolic", True, False)])
def test_a_seed_continues_the_sequence(core, kernel, with_proj, masked):
  """Sequence parallelism on one device: the summary of the first 10 tokens
  (all padded but 4 when masked) seeds a pass over the last 14, which then
  equals the last 14 outputs of one pass over all 24, with the gradients of
  the first 10 keys and values flowing back through the seed."""
  x_q, x_k, v, mask, proj = _prepared(24, kernel, with_proj, masked)
  cut = 10
  run = functools.partial(core, kernel=kernel, chunk_size=4)

  def whole(x_q, x_k, v):
    return run(x_q, x_k, v, mask, proj)[:, :, cut:]

  def split(x_q, x_k, v):
    first = lambda x: x[:, :, :cut]
    last = lambda x: x[:, :, cut:]
    kf, amp = feature_maps.resolve(kernel, proj)(first(x_k))
    keep = None if mask is None else mask[:, None, :cut]
    seed = summary.summarize(kf, amp, layout.append_ones(first(v)), keep)
    return run(last(x_q), last(x_k), last(v),
               None if mask is None else mask[:, cut:], proj, seed=seed)

  def with_grads(fn):
    loss = lambda *a: (jnp.sum(jnp.exp(jnp.sin(3.0 * fn(*a)))), fn(*a))
    return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
  both = jax.jit(lambda *a: (with_grads(split)(*a), with_grads(whole)(*a)))
  _assert_close(*both(x_q, x_k, v))


def test_auto_picks_parallel_off_the_cpu(monkeypatch):
  # A GPU older than Hopper, where "auto" keeps "parallel" (on Hopper and
  # TPU it runs the Pallas kernels: test_pallas_favor.py).
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(pallas_favor, "gpu_capability", lambda: (8, 0))
  resolve = api.resolve_implementation
  assert resolve("auto", "softmax", True) == "parallel"
  assert resolve("auto", "softmax", True, "seq") == "parallel"
  assert resolve("auto", "softmax", False) == "slim"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert resolve("auto", "softmax", True, "seq") == "slim"
  with pytest.raises(ValueError, match="'kernel' cannot start from"):
    resolve("kernel", "softmax", True, "seq")


@pytest.mark.parametrize("fn", ["favor", "softmax", "l2"])
def test_sequence_axis_outside_shard_map_names_the_fix(fn):
  q, k, v, _, proj = inputs.qkv(b=1, length=8)
  call = {"favor": functools.partial(api.favor_attention, projection=proj),
          "softmax": api.softmax_attention, "l2": api.l2_attention}[fn]
  with pytest.raises(ValueError, match="inside jax.shard_map"):
    call(q, k, v, sequence_axis="seq")
