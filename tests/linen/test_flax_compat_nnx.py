"""Tests for make_favor_attention_fn inside flax.nnx.MultiHeadAttention:
is_causal, causal and padding masks, the errors, and flax's decode=True."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import favor_attention
from performer_jax.attention import gaussian_orthogonal_random_matrix
from performer_jax.core import attention as core
from performer_jax.linen import make_favor_attention_fn
from tests.helpers.compare import assert_close

X = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 16))
PROJ = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(1), 16, 8)
PAD = jnp.ones((2, 10), bool).at[0, 7:].set(False)


def _mha(causal=False, **kwargs):
  return nnx.MultiHeadAttention(
      2, 16, attention_fn=make_favor_attention_fn(PROJ, causal=causal),
      decode=False, rngs=nnx.Rngs(2), **kwargs)


def _expected(module, causal, key_mask):
  """FAVOR+ of the module's own projections (nnx's kernels are Linen's)."""
  weights = {name: {"kernel": getattr(module, name).kernel[...],
                    "bias": getattr(module, name).bias[...]}
             for name in ("query", "key", "value", "out")}
  q, k, v = (core.dense(weights[n], X, 1, jnp.float32)
             for n in ("query", "key", "value"))
  heads = favor_attention(q, k, v, PROJ, causal=causal, key_mask=key_mask)
  return core.dense(weights["out"], heads, 2, jnp.float32)


def test_is_causal_and_masks_are_honoured():
  module = _mha()
  causal_fn = _mha(causal=True)
  nnx.update(causal_fn, nnx.state(module, nnx.Param))
  causal = _expected(module, True, None)
  assert_close(module(X, is_causal=True), causal)
  assert_close(causal_fn(X), causal)
  assert_close(module(X, mask=nnx.make_causal_mask(PAD), is_causal=True),
               causal)
  # Padding (and causal) masks, checked under nnx.jit; flax leaves the rows
  # of padded queries undefined, so only real rows are compared.
  real = np.asarray(PAD)
  padding = nnx.make_attention_mask(PAD, PAD)
  call = nnx.jit(lambda m, mask, causal: m(X, mask=mask, is_causal=causal),
                 static_argnums=2)
  for is_causal in (False, True):
    mask = padding if not is_causal else nnx.combine_masks(
        padding, nnx.make_causal_mask(PAD))
    out = call(module, mask, is_causal)
    assert_close(np.asarray(out)[real],
                 np.asarray(_expected(module, is_causal, PAD))[real])
  # The padding really is ignored: other padded inputs, same real rows.
  other = jnp.where(PAD[..., None], X, 50.0)
  assert_close(np.asarray(module(other, mask=padding))[real],
               np.asarray(module(X, mask=padding))[real], tol=1e-6)


def test_unrepresentable_inputs_raise():
  module = _mha()
  with pytest.raises(ValueError, match="is_causal=True"):
    module(X, mask=nnx.make_causal_mask(PAD))
  odd = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (2, 1, 10, 10))
  with pytest.raises(Exception, match="cannot represent"):
    nnx.jit(lambda m, mask: m(X, mask=mask))(module, odd)
  with pytest.raises(ValueError, match="attention dropout"):
    _mha(dropout_rate=0.1)(X, deterministic=False)
  assert _mha(dropout_rate=0.1)(X, deterministic=True).shape == X.shape
  with pytest.raises(ValueError, match="sow_weights=False"):
    module(X, sow_weights=True)


def test_decode_with_a_kv_cache():
  # Causal FAVOR+ cannot run on flax's key-value cache: a clear pointer.
  module = _mha(causal=True)
  module.init_cache(X.shape)
  with pytest.raises(ValueError, match=r"performer_jax\.nnx\.MultiHeadAttenti"
                     r"on\(decode=True\)"):
    module(X[:, :1], decode=True)
  bidirectional = _mha()
  bidirectional.init_cache(X.shape)
  with pytest.raises(ValueError, match="key-value cache"):
    bidirectional(X[:, :1], decode=True, is_causal=True)
  # A bidirectional drop-in reads the cache's mask as a key mask: each step
  # is then exactly causal attention (at O(length) per token).
  bidirectional = _mha()
  expected = bidirectional(X, is_causal=True)
  bidirectional.init_cache(X.shape)
  steps = [bidirectional(X[:, t:t + 1], decode=True) for t in range(10)]
  assert_close(jnp.concatenate(steps, 1), expected)
