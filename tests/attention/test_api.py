"""Argument checks of the public functions, and padded queries that cannot
poison the gradients of real positions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import favor_attention
from performer_jax.attention import l2_attention
from performer_jax.attention import softmax_attention
from tests.helpers import inputs

CASES = {
    "favor_autodiff": functools.partial(favor_attention,
                                        implementation="autodiff",
                                        chunk_size=4),
    "favor_slim": functools.partial(favor_attention, implementation="slim",
                                    chunk_size=4),
    "favor_kernel": functools.partial(favor_attention, implementation="kernel",
                                      chunk_size=4),
    "softmax": softmax_attention,
    "l2": l2_attention,
}


def _call(name, q, k, v, proj, **kw):
  if name.startswith("favor"):
    return CASES[name](q, k, v, proj, **kw)
  return CASES[name](q, k, v, **kw)


@pytest.mark.parametrize("name", ["favor_autodiff", "softmax", "l2"])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_inputs_are_rejected(name, dtype):
  q, k, v, _, proj = inputs.qkv(b=1, length=5)
  with pytest.raises(TypeError, match=r"value must be a floating-point "
                     r"array.*astype\(jnp.float32\)"):
    _call(name, q, k, v.astype(dtype), proj)


# Bidirectional "kernel" runs the fused path of "slim": not repeated.
@pytest.mark.parametrize("name,causal", [
    pytest.param(name, causal, marks=[pytest.mark.needs_kernel]
                 if name == "favor_kernel" else [])
    for name in sorted(CASES) for causal in (False, True)
    if causal or name != "favor_kernel"])
def test_nan_in_padded_queries_cannot_reach_real_gradients(name, causal):
  q, k, v, mask, proj = inputs.qkv(b=2, length=9, d=4, m=8)
  pad = ~mask[:, :, None, None]
  weight = jnp.where(mask, 1.0, 0.0)[:, :, None, None]

  def masked_loss(q, k, v):
    out = _call(name, q, k, v, proj, causal=causal, key_mask=mask,
                query_mask=mask)
    return jnp.sum(jnp.sin(out) * weight)  # a loss over real positions

  grad = jax.jit(jax.grad(masked_loss, argnums=(0, 1, 2)))
  clean = grad(q, k, v)
  poisoned = grad(*(jnp.where(pad, jnp.nan, x) for x in (q, k, v)))
  for g_clean, g_poisoned in zip(clean, poisoned):
    assert np.isfinite(g_poisoned).all()
    np.testing.assert_allclose(g_poisoned, g_clean, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(g_poisoned)[np.asarray(pad[
        ..., 0, 0])], 0.0)
  out = _call(name, jnp.where(pad, jnp.nan, q), k, v, proj, causal=causal,
              key_mask=mask, query_mask=mask)
  np.testing.assert_array_equal(np.asarray(out)[~np.asarray(mask)], 0.0)


def test_query_mask_is_checked():
  q, k, v, mask, proj = inputs.qkv(b=2, length=5)
  with pytest.raises(ValueError, match="query_mask must be boolean"):
    favor_attention(q, k, v, proj, query_mask=mask[:, :3])
  with pytest.raises(ValueError, match="query_mask must be boolean"):
    softmax_attention(q, k, v, query_mask=mask.astype(jnp.int32))
  with pytest.raises(ValueError, match=r"num_features >= 1"):
    favor_attention(q, k, v, proj[:0])
