"""Tests for make_favor_attention_fn inside flax's MultiHeadDotProductAttention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import favor_attention
from performer_jax.attention import gaussian_orthogonal_random_matrix
from performer_jax.linen import flax_compat
from performer_jax.linen import make_favor_attention_fn

X = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 16))
PROJ = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(1), 16, 8)
PAD = jnp.ones((2, 10), bool).at[0, 7:].set(False)


def _mha(causal):
  return nn.MultiHeadDotProductAttention(
      num_heads=2, attention_fn=make_favor_attention_fn(PROJ, causal=causal))


def _expected(variables, causal, key_mask):
  p = variables["params"]
  proj = lambda n: jnp.einsum("bld,dhk->blhk", X, p[n]["kernel"]) + \
      p[n]["bias"]
  heads = favor_attention(proj("query"), proj("key"), proj("value"), PROJ,
                          causal=causal, key_mask=key_mask)
  return jnp.einsum("blhk,hko->blo", heads, p["out"]["kernel"]) + \
      p["out"]["bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_drop_in_honours_padding_and_causal_masks(causal):
  module = _mha(causal)
  variables = module.init(jax.random.PRNGKey(2), X)
  mask = nn.make_attention_mask(PAD, PAD)
  if causal:
    mask = nn.combine_masks(mask, nn.make_causal_mask(PAD))
  out = jax.jit(lambda v, m: module.apply(v, X, mask=m))(variables, mask)
  expected = _expected(variables, causal, PAD)
  # Rows of padded queries are don't-care in flax; compare the real ones.
  np.testing.assert_allclose(np.asarray(out)[np.asarray(PAD)],
                             np.asarray(expected)[np.asarray(PAD)],
                             atol=1e-5)
  unmasked = module.apply(variables, X, mask=None if not causal else
                          nn.make_causal_mask(PAD))
  np.testing.assert_allclose(unmasked, _expected(variables, causal, None),
                             atol=1e-5)


def test_unrepresentable_masks_raise():
  """A concrete mask is refused at trace time; a traced one when the
  computation runs, on every backend (a host callback whose error fails
  the computation), under jit, grad and vmap, and also in a remat."""
  module = _mha(False)
  variables = module.init(jax.random.PRNGKey(2), X)
  causal_mask = nn.make_causal_mask(PAD)
  with pytest.raises(ValueError, match="causal=True"):
    module.apply(variables, X, mask=causal_mask)
  odd = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (2, 1, 10, 10))
  good = nn.make_attention_mask(PAD, PAD)

  def runs(module):
    apply = lambda v, m: module.apply(v, X, mask=m)
    loss = lambda v, m: jnp.sum(jax.checkpoint(apply)(v, m) ** 2)
    per_example = jax.vmap(
        lambda v, x, m: module.apply(v, x[None], mask=m[None])[0],
        in_axes=(None, 0, 0))
    return {"jit": jax.jit(apply), "grad+remat": jax.jit(jax.grad(loss)),
            "vmap": jax.jit(lambda v, m: per_example(v, X, m))}

  unchecked = runs(module.clone(attention_fn=make_favor_attention_fn(
      PROJ, check_mask=False)))
  for name, run in runs(module).items():
    with pytest.raises(Exception, match="cannot represent"):
      jax.block_until_ready(run(variables, odd))
    # A representable traced mask passes the check, values untouched.
    got, want = run(variables, good), unchecked[name](variables, good)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b, err_msg=name)


def test_traced_mask_without_cpu_platform_is_refused(monkeypatch):
  """With no CPU platform (JAX_PLATFORMS=cuda alone) no host callback can
  run: the traced check is refused at trace time, naming both ways out."""
  monkeypatch.setattr(flax_compat, "_has_cpu_platform", lambda: False)
  module = _mha(False)
  variables = module.init(jax.random.PRNGKey(2), X)
  good = nn.make_attention_mask(PAD, PAD)
  with pytest.raises(ValueError, match="JAX_PLATFORMS=cuda,cpu.*check_mask"):
    jax.jit(lambda v, m: module.apply(v, X, mask=m))(variables, good)
  unchecked = module.clone(attention_fn=make_favor_attention_fn(
      PROJ, check_mask=False))
  jax.jit(lambda v, m: unchecked.apply(v, X, mask=m))(variables, good)


def test_bias_and_dropout_raise():
  attention_fn = make_favor_attention_fn(PROJ)
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="bias"):
    attention_fn(q, q, q, bias=jnp.zeros((1, 2, 4, 4)))
  with pytest.raises(ValueError, match="dropout"):
    attention_fn(q, q, q, dropout_rate=0.1, deterministic=False)
  out = attention_fn(q, q, q, dropout_rate=0.1, deterministic=True,
                     dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16


def test_decode_with_a_kv_cache_points_to_the_modules():
  module = nn.MultiHeadDotProductAttention(
      num_heads=2, decode=True,
      attention_fn=make_favor_attention_fn(PROJ, causal=True))
  variables = module.init(jax.random.PRNGKey(2), X)
  with pytest.raises(ValueError, match=r"performer_jax\.linen\.MultiHeadAtten"
                     r"tion\(decode=True\)"):
    module.apply(variables, X[:, :1], mutable=["cache"])


def test_sowing_attention_weights_raises():
  module = _mha(False)
  variables = module.init(jax.random.PRNGKey(2), X)
  with pytest.raises(ValueError, match="sow_weights=False"):
    module.apply(variables, X, sow_weights=True, mutable=["intermediates"])
