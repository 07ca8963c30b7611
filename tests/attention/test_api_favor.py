"""Tests for favor_attention: exactness against brute force, causality,
masking, Haar features, large norms, bf16 and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from performer_jax.attention import favor_attention
from performer_jax.attention import gaussian_orthogonal_random_matrix
from performer_jax.attention import softmax_attention
from tests.helpers import inputs
from tests.helpers import reference

favor = jax.jit(favor_attention,
                static_argnames=("kernel", "causal", "chunk_size",
                                 "implementation"))


def square_features(x, projection):
  del projection
  return jnp.square(x)  # The SLiM paper's x^2 feature map.


def _np_features(kernel, x, proj):
  x = np.asarray(x, np.float64) * x.shape[-1] ** -0.25
  p = None if proj is None else np.asarray(proj, np.float64)
  half_sq = 0.5 * np.sum(x * x, -1, keepdims=True)
  if kernel == "softmax":
    return np.exp(x @ p.T - half_sq)
  if kernel == "softmax_hyperbolic":
    return np.concatenate([np.exp(x @ p.T - half_sq),
                           np.exp(-x @ p.T - half_sq)], -1)
  if kernel == "softmax_trig":
    return np.exp(half_sq) * np.concatenate([np.sin(x @ p.T),
                                             np.cos(x @ p.T)], -1)
  if kernel == "relu":
    return np.maximum(x if p is None else x @ p.T, 0) + 1e-3
  return np.square(x)


_inputs = inputs.qkv


KERNEL_CASES = [("softmax", True), ("softmax_hyperbolic", True),
                ("softmax_trig", True), ("relu", True), ("relu", False),
                (square_features, False)]
STABILIZED = ["softmax", "softmax_hyperbolic", "softmax_trig"]


def _cases(implementations, *rows):
  """The product of `rows` (tuples of parameters, the kernel first) and
  `implementations` (the last parameter), without the kernel's rejected
  signed features (test_cpu_kernel.py checks that error); the compiled
  kernel's cases skip where it cannot run."""
  cases = []
  for row in rows:
    for impl in implementations:
      params = (*row, impl)
      if impl == "kernel" and row[0] == "softmax_trig":
        continue
      marks = [pytest.mark.needs_kernel] if impl == "kernel" else []
      cases.append(pytest.param(*params, marks=marks))
  return cases


@pytest.mark.parametrize("kernel,with_proj,causal,chunk,implementation", [
    *_cases(["slim", "autodiff"], *[(*kp, False, 64) for kp in KERNEL_CASES]),
    *_cases(["slim", "kernel"], *[(*kp, True, chunk) for kp in KERNEL_CASES
                                  for chunk in (5, 64)]),
    *_cases(["autodiff", "parallel"], *[(*kp, True, 5)
                                        for kp in KERNEL_CASES])])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_brute_force_with_same_features(kernel, with_proj, causal,
                                               chunk, implementation, masked):
  q, k, v, mask, proj = _inputs()
  proj = proj if with_proj else None
  key_mask = mask if masked else None
  out = favor(q, k, v, proj, kernel=kernel, causal=causal, key_mask=key_mask,
              chunk_size=chunk, implementation=implementation)
  name = kernel if isinstance(kernel, str) else "square"
  ref = reference.favor_from_features(
      _np_features(name, q, proj), _np_features(name, k, proj), v, causal,
      key_mask)
  if masked and causal:
    # Queries before the first visible key have an empty key set: output 0.
    ref = np.nan_to_num(ref)
  tol = 2e-3 if name == "softmax_trig" else 2e-5
  np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)


def test_long_causal_sequence_equals_brute_force():
  q, k, v, _, proj = _inputs(b=1, length=3000, h=1, d=8, m=16)
  out = favor(q, k, v, proj, causal=True, chunk_size=64)
  ref = reference.favor_from_features(_np_features("softmax", q, proj),
                                      _np_features("softmax", k, proj), v,
                                      causal=True)
  np.testing.assert_allclose(out, ref, atol=5e-5, rtol=5e-5)


def test_converges_to_softmax_and_orthogonal_helps():
  q, k, v, _, _ = _inputs(b=1, length=64, h=1, d=16, scale=0.5)
  exact = softmax_attention(q, k, v)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def mean_error(m, orthogonal):
    def error(key):
      proj = gaussian_orthogonal_random_matrix(key, m, 16,
                                               orthogonal=orthogonal)
      return jnp.mean((favor_attention(q, k, v, proj) - exact) ** 2)
    keys = jax.random.split(jax.random.PRNGKey(100), 8)
    return jnp.mean(jax.lax.map(error, keys))

  mse = {m: mean_error(m, True) for m in (16, 64, 256, 1024)}
  # MSE ~ 1/m: 64x more features must cut it by well over 16x.
  assert mse[1024] < mse[16] / 16
  assert mse[64] < mse[16] and mse[256] < mse[64] and mse[1024] < mse[256]
  assert mse[1024] < 1e-3
  assert mean_error(64, True) <= 1.1 * mean_error(64, False)


@pytest.mark.parametrize("kernel,chunk,implementation", _cases(
    ["slim", "autodiff", "kernel", "parallel"],
    *[(kernel, chunk) for kernel in STABILIZED + ["relu"]
      for chunk in (4, 64)]))
def test_no_future_leak_through_stabilizer(kernel, chunk, implementation):
  """Scaling the last key (the official code's leak: up to 0.96) must not
  move any earlier output, not even through the max stabilizer."""
  q, k, v, _, proj = _inputs(length=20, scale=2.0)
  run = lambda k: favor(q, k, v, proj, kernel=kernel, causal=True,
                        chunk_size=chunk, implementation=implementation)
  base = run(k)
  for factor in (3.0, 30.0):
    out = run(k.at[:, -1].multiply(factor))
    np.testing.assert_allclose(out[:, :-1], base[:, :-1], atol=1e-6,
                               rtol=1e-6)
    assert not np.allclose(out[:, -1], base[:, -1], atol=1e-3)


def test_a_global_key_max_would_leak():
  """The test above can fail: the peers' stabilizer (max of w.k over the
  whole sequence, then + eps) moves earlier outputs when the last key grows."""
  q, k, v, _, proj = _inputs(b=1, length=20, h=1, scale=1.0)
  p = np.asarray(proj, np.float64)

  def peer(k):
    qf = reference.positive_features(np.asarray(q) * 8 ** -0.25, proj)
    kk = np.asarray(k, np.float64) * 8 ** -0.25
    wk = kk @ p.T
    kf = np.exp(wk - 0.5 * np.sum(kk ** 2, -1, keepdims=True) -
                wk.max()) + 1e-6
    return reference.favor_from_features(qf, kf, v, causal=True)

  change = np.abs(peer(k.at[:, -1].multiply(10.0)) - peer(k))[:, :-1].max()
  assert change > 1e-2


@pytest.mark.parametrize("kernel,implementation", _cases(
    ["slim", "autodiff", "kernel", "parallel"], ("softmax",), ("relu",)))
def test_gradients_are_causal(kernel, implementation):
  q, k, v, _, proj = _inputs(b=1, length=12, scale=1.5)
  t = 6

  def early_sum(q, k, v):
    out = favor_attention(q, k, v, proj, kernel=kernel, causal=True,
                          chunk_size=4, implementation=implementation)
    return jnp.sum(out[:, :t] ** 2)

  grads = jax.jit(jax.grad(early_sum, argnums=(0, 1, 2)))(q, k, v)
  for g in grads:
    np.testing.assert_array_equal(g[:, t:], 0.0)
    assert np.abs(g[:, :t]).max() > 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_key_mask_removes_padding_from_numerator_and_normalizer(causal):
  q, k, v, mask, proj = _inputs()
  pad = ~mask[:, :, None, None]
  base = favor(q, k, v, proj, causal=causal, key_mask=mask, chunk_size=4)
  for junk in (1e4, jnp.inf, jnp.nan):
    out = favor(q, jnp.where(pad, junk, k), jnp.where(pad, junk, v), proj,
                causal=causal, key_mask=mask, chunk_size=4)
    np.testing.assert_allclose(out, base, atol=1e-6)
  # Dropping the padded keys outright gives the same rows: compact row 0.
  keep = np.flatnonzero(np.asarray(mask[0]))
  sub = favor(q[:1, keep], k[:1, keep], v[:1, keep], proj, causal=causal,
              chunk_size=4)
  # Another length, so other chunk boundaries and summation order.
  np.testing.assert_allclose(sub[0], base[0, keep], atol=1e-5)
  # Masking only the values (the peers' bug) gives a different answer.
  values_only = favor(q, k, jnp.where(pad, 0.0, v), proj, causal=causal,
                      chunk_size=4)
  assert np.abs(values_only[0, keep] - base[0, keep]).max() > 1e-2


@pytest.mark.parametrize("kernel", ["softmax", "softmax_hyperbolic", "relu",
                                    "softmax_trig"])
@pytest.mark.parametrize("causal", [False, True])
def test_large_norms_stay_finite(kernel, causal):
  q, k, v, _, proj = _inputs(b=1, length=40, h=2, d=16, m=64, scale=12.0)
  fn = lambda q, k, v: favor_attention(q, k, v, proj, kernel=kernel,
                                       causal=causal, chunk_size=16)
  out, vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(q, k, v)
  grads = vjp(jnp.ones_like(out))
  assert np.isfinite(out).all()
  for g in grads:
    assert np.isfinite(g).all()
  if kernel != "softmax_trig":
    # Positive features give convex combinations of the values.
    assert np.abs(out).max() <= np.abs(v).max() + 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_in_bfloat16_out(causal):
  q, k, v, _, proj = _inputs()
  out32 = favor(q, k, v, proj, causal=causal)
  out16 = favor(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                v.astype(jnp.bfloat16), proj, causal=causal)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=0.06)


@pytest.mark.parametrize("causal", [False, True])
def test_check_grads_and_jit(causal):
  q, k, v, mask, proj = _inputs(b=1, length=6, h=1, d=4, m=8)
  fn = functools.partial(favor_attention, projection=proj, causal=causal,
                         key_mask=mask[:1], chunk_size=4)
  call = lambda q, k, v: fn(q, k, v)
  check_grads(jax.jit(call), (q, k, v), order=1, modes=("rev",), atol=2e-2,
              rtol=2e-2, eps=1e-2)
  # Eager runs op by op, jit fuses: the same math in another float32 order.
  np.testing.assert_allclose(jax.jit(call)(q, k, v), call(q, k, v),
                             atol=1e-5)


def test_batch_dims_and_errors():
  q, k, v, mask, proj = _inputs(b=4)
  out = favor(q.reshape(2, 2, 23, 2, 8), k.reshape(2, 2, 23, 2, 8),
              v.reshape(2, 2, 23, 2, 8), proj, causal=True,
              key_mask=mask.reshape(2, 2, 23))
  np.testing.assert_allclose(
      out.reshape(4, 23, 2, 8),
      favor(q, k, v, proj, causal=True, key_mask=mask), atol=1e-6)
  with pytest.raises(ValueError, match="projection must be"):
    favor_attention(q, k, v, proj[:, :3])
  with pytest.raises(ValueError, match="q_len == kv_len"):
    favor_attention(q[:, :5], k, v, proj, causal=True)
  with pytest.raises(ValueError, match="unknown kernel"):
    favor_attention(q, k, v, proj, kernel="cosine")
  with pytest.raises(ValueError, match="needs a projection"):
    favor_attention(q, k, v, None, kernel="softmax")
  with pytest.raises(ValueError, match="implementation must be one of"):
    favor_attention(q, k, v, proj, causal=True, implementation="scan")
