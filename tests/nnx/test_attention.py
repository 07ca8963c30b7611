"""Tests for performer_jax.nnx.MultiHeadAttention: a float64 brute force, the
Linen module on the same weights, masks, causality, gradients, decoding,
random features and the errors."""

import dataclasses
import functools
import inspect

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from performer_jax import linen as pjnn
from performer_jax import nnx as pnnx
from performer_jax.schemas import AttentionConfig
from performer_jax.schemas import ModelConfig
from tests.helpers import reference
from tests.helpers.compare import assert_close
from tests.helpers.compare import assert_trees_close

# (attention, kernel, num_features): every kind, and FAVOR+ with a
# projection and with deterministic relu features.
CASES = [("softmax", "softmax", 8), ("favor", "softmax", 8),
         ("favor", "relu", 8), ("favor", "relu", 0), ("l2", "softmax", 8)]
IDS = ["-".join(map(str, case)) for case in CASES]
# Without the relu features drawn from a projection (brute-forced above).
MAIN = [case for case in CASES if case != ("favor", "relu", 8)]
MAIN_IDS = ["-".join(map(str, case)) for case in MAIN]
X = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 16))
X_KV = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
PAD = jnp.ones((2, 9), bool).at[:, 6:].set(False)
PAD_KV = jnp.ones((2, 7), bool).at[0, 4:].set(False)


@functools.lru_cache(maxsize=None)
def pair(attention, kernel, num_features, causal=False, **kwargs):
  """(NNX module, Linen module, the NNX module's variables in Linen form).

  Shared: tests that mutate the module work on `nnx.clone(module)`."""
  config = AttentionConfig(kind=attention, kernel=kernel,
                           num_features=num_features)
  kwargs.update(config=config, causal=causal)
  module = pnnx.MultiHeadAttention(
      16, 2, rngs=nnx.Rngs(params=1, random_features=2), **kwargs)
  linen = pjnn.MultiHeadAttention(num_heads=2, **kwargs)
  return module, linen, pnnx.to_linen_variables(module)


def brute_force(variables, attention, kernel, x, x_kv, key_mask, causal):
  """float64 numpy MHA of the weights `variables` (Linen form)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  x, x_kv = np.asarray(x, np.float64), np.asarray(x_kv, np.float64)
  proj = lambda w, a: (np.einsum("bld,dhk->blhk", a, w["kernel"]) +
                       w.get("bias", 0.0))
  if attention == "l2":
    q, k = proj(p["query"], x), proj(p["query"], x_kv)
    if key_mask is not None:
      # l2_attention zeroes padded keys; a padded query still sees itself.
      k = k * np.asarray(key_mask)[:, :, None, None]
    heads = reference.softmax_attention(q, k, k, causal, key_mask, l2=True)
    wq, wv = p["query"]["kernel"], p["value"]["kernel"]
    heads = np.einsum("blhk,dhk,dhv->blhv", heads, wq, wv) / np.sqrt(8)
  else:
    q, k, v = (proj(p[n], a) for n, a in (("query", x), ("key", x_kv),
                                          ("value", x_kv)))
    if attention == "softmax":
      heads = reference.softmax_attention(q, k, v, causal, key_mask)
    else:
      features = lambda a: _features(kernel, a, variables)
      heads = reference.favor_from_features(features(q), features(k), v,
                                            causal, key_mask)
  return np.einsum("blhk,hko->blo", heads, p["out"]["kernel"]) + \
      p["out"]["bias"]


def _features(kernel, a, variables):
  a = a * a.shape[-1] ** -0.25
  if "random_features" not in variables:
    return np.maximum(a, 0) + 1e-3  # deterministic relu features
  p = np.asarray(variables["random_features"]["projection"], np.float64)
  if kernel == "relu":
    return np.maximum(a @ p.T, 0) + 1e-3
  return reference.positive_features(a, p)


def test_state_is_the_linen_tree_with_logical_axes():
  for case in CASES:
    module, linen, variables = pair(*case)
    boxed = jax.eval_shape(linen.init, jax.random.PRNGKey(0), X)
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype),
                                       nn.unbox(tree))
    assert shapes(variables) == shapes(boxed), case
    # Every parameter carries Linen's logical axis names.
    linen_axes = nn.get_partition_spec(boxed)["params"]
    nnx_axes = nnx.to_pure_dict(jax.tree.map(
        lambda v: v.get_metadata()["out_sharding"],
        nnx.state(module, nnx.Param), is_leaf=lambda v: isinstance(
            v, nnx.Variable)))
    assert jax.tree.map(tuple, linen_axes) == nnx_axes, case
  module = pair("favor", "softmax", 8)[0]
  assert isinstance(module.projection, pnnx.RandomFeatures)
  assert not isinstance(module.projection, nnx.Param)
  assert module.projection.shape == (8, 8)
  assert pair("favor", "relu", 0)[0].projection is None


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_equals_brute_force_with_masks(case, causal):
  module, _, variables = pair(*case, causal=causal)
  # Self-attention when causal (q_len == kv_len), cross-attention else.
  x_kv, mask = (X, PAD) if causal else (X_KV, PAD_KV)
  for key_mask in (None, mask):
    out = module(X, None if causal else x_kv, key_mask=key_mask)
    expected = brute_force(variables, case[0], case[1], X, x_kv, key_mask,
                           causal)
    assert out.shape == (2, 9, 16) and out.dtype == jnp.float32
    if causal and key_mask is not None:
      # In self-attention the key mask marks padded queries too: their rows
      # are computed from zeroed inputs (tests/nn checks they stay inert).
      out, expected = out[key_mask], expected[key_mask]
    assert_close(out, expected)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", MAIN, ids=MAIN_IDS)
def test_equals_linen_on_the_same_weights(case, causal):
  module, linen, variables = pair(*case, causal=causal)
  mask = PAD if causal else PAD_KV
  x_kv = None if causal else X_KV
  out = module(X, x_kv, key_mask=mask)
  expected = linen.apply(variables, X, x_kv, key_mask=mask)
  # The same function, both eager: equal up to the last float32 bit or so.
  assert_close(out, expected, tol=1e-6)
  if not causal:
    # And back (the weights do not depend on causal): a Linen init loaded
    # into a fresh NNX module.
    other = pnnx.MultiHeadAttention(
        16, 2, AttentionConfig(kind=case[0], kernel=case[1],
                               num_features=case[2]), rngs=nnx.Rngs(7))
    boxed = linen.init(jax.random.PRNGKey(5), X)
    pnnx.update_from_linen(other, boxed)
    assert_close(other(X, x_kv, key_mask=mask),
                 linen.apply(boxed, X, x_kv, key_mask=mask), tol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_causal_outputs_ignore_later_tokens(case):
  module = pair(*case, causal=True)[0]
  out = module(X)
  changed = module(X.at[:, 5:].set(3.0 * X[:, 5:] + 1.0))
  np.testing.assert_array_equal(out[:, :5], changed[:, :5])
  assert np.abs(out[:, 5:] - changed[:, 5:]).max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_padded_keys_cannot_leak(case, causal):
  module = pair(*case, causal=causal)[0]
  base = module(X, key_mask=PAD)
  for pad_value in (100.0, 1.0 - 2.0 * X[:, 6:]):
    padded = X.at[:, 6:].set(pad_value)
    assert_close(module(padded, key_mask=PAD)[:, :6], base[:, :6], tol=1e-6)
  if not causal:
    # Unmasked, the padding does change the real tokens' outputs.
    assert np.abs(module(padded)[:, :6] - base[:, :6]).max() > 1e-3


# FAVOR+'s custom VJPs and L2's tied weights; softmax is plain autodiff.
@pytest.mark.parametrize("case", [("favor", "softmax", 8),
                                  ("l2", "softmax", 8)], ids=["favor", "l2"])
def test_gradients_equal_linen(case):
  module, linen, variables = pair(*case, causal=True)
  weights_BLD = jnp.sin(jnp.arange(9 * 16.0)).reshape(1, 9, 16)
  loss = lambda out: jnp.sum(weights_BLD * out)
  grads = nnx.grad(lambda m: loss(m(X, key_mask=PAD)))(module)
  linen_grads = jax.grad(lambda p: loss(linen.apply(
      {**variables, "params": p}, X, key_mask=PAD)))(variables["params"])
  # Gradients flow to Params only: never to the random features.
  assert nnx.to_pure_dict(nnx.state(grads, pnnx.RandomFeatures)) == {}
  assert_trees_close(nnx.to_pure_dict(grads), linen_grads, tol=1e-5)


def test_check_grads():
  module = pnnx.MultiHeadAttention(8, 2,
               config=AttentionConfig(kind="favor", num_features=8),
               causal=True, rngs=nnx.Rngs(3))
  x = jax.random.normal(jax.random.PRNGKey(4), (1, 5, 8))
  check_grads(jax.jit(lambda x: module(x)), (x,), order=1, modes=("rev",),
              atol=2e-2, rtol=2e-2, eps=1e-2)


def decode_all(module, x):
  """Feeds x [B, L, D] token by token through a decoding clone; returns the
  outputs [B, L, O] and the clone."""
  module = nnx.clone(module)
  module.set_attributes(decode=True)
  module.init_cache(x.shape[0], x.shape[1])
  step = nnx.jit(lambda m, x_B1D: m(x_B1D))
  outs = [step(module, x[:, t:t + 1]) for t in range(x.shape[1])]
  return jnp.concatenate(outs, 1), module


@pytest.mark.parametrize("case", MAIN, ids=MAIN_IDS)
def test_decode_under_jit_equals_full_forward_and_linen(case):
  module, linen, variables = pair(*case, causal=True)
  stepped, decoder = decode_all(module, X)
  assert int(decoder.cache_index[...]) == 9
  assert_close(stepped, module(X), tol=2e-5)
  # The cache is Linen's cache after the same steps.
  linen_decoder = linen.clone(decode=True)
  cache = linen_decoder.init(jax.random.PRNGKey(0), X)["cache"]
  for t in range(9):
    _, mutated = linen_decoder.apply({**variables, "cache": cache},
                                     X[:, t:t + 1], mutable=["cache"])
    cache = mutated["cache"]
  assert_trees_close(pnnx.to_linen_variables(decoder)["cache"], dict(cache),
                     tol=1e-5)


def test_decode_errors():
  module = pair("favor", "softmax", 8, causal=True)[0]
  with pytest.raises(ValueError, match="needs causal=True"):
    pnnx.MultiHeadAttention(16, 2, decode=True, rngs=nnx.Rngs(0))
  encoder = nnx.clone(pair("softmax", "softmax", 8)[0])
  encoder.set_attributes(decode=True)
  with pytest.raises(ValueError, match="needs causal=True"):
    encoder(X[:, :1])
  decoder = nnx.clone(module)
  decoder.set_attributes(decode=True)
  with pytest.raises(ValueError, match=r"call init_cache\(batch_size"):
    decoder(X[:, :1])
  decoder.init_cache(2, 9)
  softmax_decoder = nnx.clone(pair("softmax", "softmax", 8, causal=True)[0])
  softmax_decoder.set_attributes(decode=True)
  softmax_decoder.init_cache(2, 4)
  with pytest.raises(ValueError, match="do not fit a decoding cache of 4"):
    softmax_decoder(X[:, :5])
  with pytest.raises(ValueError, match="key_mask is not supported"):
    decoder(X[:, :1], key_mask=PAD[:, :1])


def test_redraw_changes_only_the_features_like_linen():
  module, linen, variables = pair("favor", "softmax", 8)
  module = nnx.clone(module)
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  old = module.projection[...]
  pnnx.redraw_random_features(module, jax.random.PRNGKey(9))
  new = module.projection[...]
  assert new.shape == old.shape and not np.allclose(new, old)
  jax.tree.map(np.testing.assert_array_equal, params,
               nnx.to_pure_dict(nnx.state(module, nnx.Param)))
  # The Linen redraw of the same variables draws the same features.
  linen_new = pjnn.redraw_random_features(variables, jax.random.PRNGKey(9))
  np.testing.assert_array_equal(
      new, linen_new["random_features"]["projection"])
  # In place under nnx.jit too, and reproducible by key.
  nnx.jit(pnnx.redraw_random_features)(module, jax.random.PRNGKey(9))
  np.testing.assert_array_equal(module.projection[...], new)
  assert not np.allclose(module(X), pair("favor", "softmax", 8)[0](X))
  pnnx.redraw_random_features(pair("l2", "softmax", 8)[0],
                              jax.random.PRNGKey(0))  # nothing to redraw


def test_optimizer_over_params_leaves_the_features_alone():
  module = nnx.clone(pair("favor", "softmax", 8, causal=True)[0])
  optimizer = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(module, optimizer):
    loss = lambda m: jnp.mean((m(X) - X) ** 2)
    value, grads = nnx.value_and_grad(loss)(module)
    optimizer.update(module, grads)
    return value

  projection = module.projection[...]
  kernel = module.query.kernel[...]
  losses = [float(step(module, optimizer)) for _ in range(3)]
  np.testing.assert_array_equal(module.projection[...], projection)
  assert not np.allclose(module.query.kernel[...], kernel)
  assert losses[-1] < losses[0]


def test_dropout_in_training_mode_only():
  module = pnnx.MultiHeadAttention(16, 2, dropout_rate=0.5,
                                   rngs=nnx.Rngs(0))
  assert not np.allclose(module(X), module(X))  # a new mask per call
  module.eval()
  np.testing.assert_array_equal(module(X), module(X))
  np.testing.assert_array_equal(module(X), module(X, deterministic=True))
  assert not np.allclose(module(X), module(X, deterministic=False))


def test_rngs_streams_and_defaults():
  make = lambda rngs: pnnx.MultiHeadAttention(
      16, 2, AttentionConfig(kind="favor", num_features=8), rngs=rngs)
  a = make(nnx.Rngs(params=0, random_features=1))
  b = make(nnx.Rngs(params=0, random_features=2))
  np.testing.assert_array_equal(a.query.kernel[...], b.query.kernel[...])
  assert not np.allclose(a.projection[...], b.projection[...])
  # Without a random_features stream the features come from "params".
  c, d = make(nnx.Rngs(params=3)), make(nnx.Rngs(params=3))
  np.testing.assert_array_equal(c.projection[...], d.projection[...])
  assert make(nnx.Rngs(3)).projection.shape == (8, 8)
  # Dropout without a dropout stream forks one from params.
  dropped = pnnx.MultiHeadAttention(16, 2, dropout_rate=0.5,
                                    rngs=nnx.Rngs(params=0))
  assert dropped(X).shape == (2, 9, 16)


def test_dtypes_and_widths():
  module = pnnx.MultiHeadAttention(
      16, 2, AttentionConfig(kind="favor", num_features=8), qkv_features=8,
      out_features=12, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(
      nnx.state(module)))
  out = module(X)
  assert out.shape == (2, 9, 12) and out.dtype == jnp.bfloat16
  assert module.query.kernel.shape == (16, 2, 4)
  assert np.isfinite(np.asarray(out, np.float32)).all()


def test_bad_arguments_are_named():
  make = lambda **kw: pnnx.MultiHeadAttention(16, 2, AttentionConfig(**kw),
                                              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"config\.model\.attention\.kind"
                     r" must be one of \['softmax', 'favor', 'l2'\]"):
    make(kind="linear")
  with pytest.raises(ValueError, match="divisible by num_heads"):
    pnnx.MultiHeadAttention(16, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"config\.model\.attention\.kernel "
                     "must be one of"):
    make(kind="favor", kernel="cos")
  with pytest.raises(ValueError, match="in_features=16"):
    make()(jnp.ones((2, 3, 8)))
  config = AttentionConfig(kind="favor", num_features=8)
  assert pnnx.MultiHeadAttention(16, 2, config,
                                 rngs=nnx.Rngs(0)).config == config


def test_one_attention_config_for_both_apis_and_the_config_file():
  """The modules take the config section itself: the same defaults, and no
  attention setting declared a second time as a module argument."""
  linen_layer = pjnn.MultiHeadAttention(num_heads=2)
  nnx_layer = pnnx.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0))
  assert linen_layer.config == nnx_layer.config == AttentionConfig()
  assert ModelConfig().attention == AttentionConfig()
  assert linen_layer.attention_core(16).config == AttentionConfig()
  settings = {f.name for f in dataclasses.fields(AttentionConfig)}
  linen_args = {f.name for f in dataclasses.fields(pjnn.MultiHeadAttention)}
  nnx_args = set(inspect.signature(pnnx.MultiHeadAttention).parameters)
  assert not settings & (linen_args | nnx_args)
  with pytest.raises(TypeError, match="takes an AttentionConfig"):
    pnnx.MultiHeadAttention(16, 2, {"kind": "favor"}, rngs=nnx.Rngs(0))
