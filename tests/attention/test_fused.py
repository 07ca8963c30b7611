"""Tests for the fused bidirectional FAVOR+ VJP (attention/fused.py):
its values and hand-written gradients against autodiff of the plain path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from performer_jax.attention import fused
from performer_jax.attention import favor_attention
from performer_jax.attention import gaussian_orthogonal_random_matrix


def _inputs(b=2, length=11, s=9, h=3, d=8, m=24, scale=1.0, seed=0):
  r = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = scale * jax.random.normal(r[0], (b, length, h, d))
  k = scale * jax.random.normal(r[1], (b, s, h, d))
  v = jax.random.normal(r[2], (b, s, h, 5))
  mask = jax.random.bernoulli(r[3], 0.6, (b, s)).at[:, 0].set(True)
  proj = gaussian_orthogonal_random_matrix(r[4], m, d)
  return q, k, v, mask, proj


def _value_and_grads(implementation, kernel, q, k, v, mask, proj):
  def loss(q, k, v):
    out = favor_attention(q, k, v, proj, kernel=kernel, key_mask=mask,
                          implementation=implementation)
    # A nonlinear loss, so every output entry gets a different cotangent.
    return jnp.sum(jnp.sin(3.0 * out))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("kernel", ["softmax", "softmax_hyperbolic"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_fused_equals_autodiff(kernel, masked, scale):
  q, k, v, mask, proj = _inputs(scale=scale)
  mask = mask if masked else None
  got = _value_and_grads("slim", kernel, q, k, v, mask, proj)
  plain = _value_and_grads("autodiff", kernel, q, k, v, mask, proj)
  np.testing.assert_allclose(got[0], plain[0], rtol=1e-5, atol=1e-5)
  for g_fused, g_plain in zip(got[1], plain[1]):
    assert np.isfinite(g_fused).all()
    scale_g = np.abs(g_plain).max()
    np.testing.assert_allclose(g_fused, g_plain, atol=2e-4 * scale_g)


def test_check_grads_with_mask():
  q, k, v, mask, proj = _inputs(b=1, length=5, s=6, h=2, d=4, m=8)
  fn = jax.jit(lambda q, k, v: favor_attention(q, k, v, proj, key_mask=mask))
  check_grads(fn, (q, k, v), order=1, modes=("rev",), atol=2e-2, rtol=2e-2,
              eps=1e-2)


def test_fully_padded_row_gives_zeros_and_finite_grads():
  q, k, v, mask, proj = _inputs()
  mask = mask.at[1].set(False)
  out, vjp = jax.vjp(lambda q, k, v: favor_attention(q, k, v, proj,
                                                     key_mask=mask), q, k, v)
  np.testing.assert_array_equal(out[1], 0.0)
  assert np.abs(out[0]).max() > 1e-3
  for g in vjp(jnp.ones_like(out)):
    assert np.isfinite(g).all()


def test_padded_keys_get_zero_gradient():
  q, k, v, mask, proj = _inputs()
  grads = jax.grad(lambda k, v: jnp.sum(favor_attention(
      q, k, v, proj, key_mask=mask) ** 2), argnums=(0, 1))(k, v)
  pad = ~np.asarray(mask)
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g)[pad], 0.0)
    assert np.abs(np.asarray(g)[~pad]).max() > 1e-4


def test_fused_path_is_taken_and_shapes():
  q, k, v, mask, proj = _inputs()
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  scale = q.shape[-1] ** -0.25
  out = heads_major(fused.bidirectional(
      heads_major(q) * scale, heads_major(k) * scale, heads_major(v), mask,
      proj, kernel="softmax"))
  assert out.shape == (2, 11, 3, 5) and out.dtype == jnp.float32
  ref = favor_attention(q, k, v, proj, key_mask=mask,
                        implementation="autodiff")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
