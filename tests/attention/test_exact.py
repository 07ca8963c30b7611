"""Tests for the exact softmax_attention and l2_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from performer_jax.attention import l2_attention
from performer_jax.attention import softmax_attention
from tests.helpers import reference

# Jitted once per shape: eager op-by-op dispatch would dominate test time.
FUNCTIONS = {
    "softmax": jax.jit(softmax_attention, static_argnames=("causal",)),
    "l2": jax.jit(l2_attention, static_argnames=("causal", "keep_self")),
}
EAGER = {"softmax": softmax_attention, "l2": l2_attention}


def _inputs(b=2, lq=7, lk=7, h=2, d=4, seed=0, scale=1.0):
  r = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = scale * jax.random.normal(r[0], (b, lq, h, d))
  k = scale * jax.random.normal(r[1], (b, lk, h, d))
  v = jax.random.normal(r[2], (b, lk, h, d + 1))
  mask = jax.random.bernoulli(r[3], 0.7, (b, lk)).at[:, 0].set(True)
  return q, k, v, mask


@pytest.mark.parametrize("kind", ["softmax", "l2"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("lq,lk", [(7, 7), (5, 9)])
def test_matches_brute_force(kind, causal, masked, lq, lk):
  """Lq < Lk: causal queries sit at the last Lq key positions (a prefix
  of Lk - Lq keys precedes them, as when decoding after a prompt)."""
  q, k, v, mask = _inputs(lq=lq, lk=lk)
  key_mask = mask if masked else None
  out = FUNCTIONS[kind](q, k, v, causal=causal, key_mask=key_mask)
  if masked:
    # A padded query still attends to its own position, whose contents are
    # zeroed like every padded key's.
    keep = mask[:, :, None, None]
    k, v = jnp.where(keep, k, 0.0), jnp.where(keep, v, 0.0)
  ref = reference.softmax_attention(q, k, v, causal, key_mask, l2=kind == "l2")
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


def test_softmax_equals_jax_nn():
  q, k, v, _ = _inputs(lq=5, lk=9)
  v = v[..., :4]
  np.testing.assert_allclose(
      softmax_attention(q, k, v),
      jax.nn.dot_product_attention(q, k, v), atol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "l2"])
def test_padding_contents_cannot_leak(kind):
  q, k, v, mask = _inputs()
  garbage = jnp.where(mask[:, :, None, None], 0.0, 1e4)
  nan_garbage = jnp.where(mask[:, :, None, None], 0.0, jnp.nan)
  fn = FUNCTIONS[kind]
  base = fn(q, k, v, key_mask=mask)
  for junk in (garbage, nan_garbage):
    out = fn(q, jnp.nan_to_num(k + junk, nan=jnp.nan), v + junk,
             key_mask=mask)
    real_rows = mask if kind == "l2" else jnp.ones_like(mask)
    np.testing.assert_allclose(
        np.asarray(out)[np.asarray(real_rows)],
        np.asarray(base)[np.asarray(real_rows)], atol=1e-6)


def test_softmax_query_without_keys_outputs_zero():
  q, k, v, _ = _inputs()
  mask = jnp.zeros((2, 7), bool).at[:, 3:].set(True)
  out = softmax_attention(q, k, v, causal=True, key_mask=mask)
  np.testing.assert_array_equal(out[:, :3], 0.0)
  assert np.isfinite(out).all()


def test_l2_never_masks_self():
  q, k, v, _ = _inputs(b=1, lq=5, lk=5)
  mask = jnp.zeros((1, 5), bool)
  out = l2_attention(q, k, v, causal=True, key_mask=mask)
  # Only the (zeroed) self position is visible: outputs are exactly 0, finite.
  np.testing.assert_array_equal(out, 0.0)
  # Without a mask, query 0 under causal sees only itself.
  out = l2_attention(q, k, v, causal=True)
  np.testing.assert_allclose(out[:, 0], v[:, 0], atol=1e-6)


def test_l2_is_translation_invariant_in_logits():
  """-||q-k||^2 ignores a shift of both q and k; q.k does not."""
  q, k, v, _ = _inputs(lq=6, lk=6)
  shift = jnp.array([3.0, -2.0, 1.0, 0.5])
  np.testing.assert_allclose(l2_attention(q + shift, k + shift, v),
                             l2_attention(q, k, v), atol=2e-5)
  assert not np.allclose(softmax_attention(q + shift, k + shift, v),
                         softmax_attention(q, k, v), atol=1e-3)


@pytest.mark.parametrize("kind", ["softmax", "l2"])
def test_extra_batch_dims_and_dtype(kind):
  q, k, v, mask = _inputs(b=6)
  fn = FUNCTIONS[kind]
  out = fn(q.reshape(2, 3, 7, 2, 4), k.reshape(2, 3, 7, 2, 4),
           v.reshape(2, 3, 7, 2, 5), key_mask=mask.reshape(2, 3, 7))
  np.testing.assert_allclose(out.reshape(6, 7, 2, 5),
                             fn(q, k, v, key_mask=mask), atol=1e-6)
  out16 = fn(*(a.astype(jnp.bfloat16) for a in (q, k, v)), causal=True)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32),
                             fn(q, k, v, causal=True), atol=0.05)


@pytest.mark.parametrize("kind", ["softmax", "l2"])
def test_gradients_and_jit(kind):
  q, k, v, mask = _inputs(b=1, lq=4, lk=4, h=1, d=3)
  fn = lambda q, k, v: EAGER[kind](q, k, v, causal=True, key_mask=mask)
  jitted = jax.jit(fn)
  check_grads(jitted, (q, k, v), order=1, modes=("rev",), atol=2e-2,
              rtol=2e-2, eps=1e-2)
  # Eager runs op by op, jit fuses: the same math in another float32 order.
  np.testing.assert_allclose(jitted(q, k, v), fn(q, k, v), atol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "l2"])
def test_bad_shapes_are_named(kind):
  q, k, v, mask = _inputs()
  fn = EAGER[kind]
  with pytest.raises(ValueError, match="key_mask must have shape"):
    fn(q, k, v, key_mask=mask[:, :3])
  with pytest.raises(ValueError, match="head_dim"):
    fn(q, k[..., :3], v)
  with pytest.raises(ValueError, match="boolean"):
    fn(q, k, v, key_mask=mask.astype(jnp.int32))
  with pytest.raises(ValueError, match="batch..., length, heads"):
    fn(q[0, 0], k, v)
