"""Tests for performer_jax.linen.MultiHeadAttention and redraw_random_features."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax.attention import favor_attention
from performer_jax.linen import MultiHeadAttention
from performer_jax.linen import redraw_random_features
from performer_jax.schemas import AttentionConfig
from tests.helpers import reference

KINDS = ["softmax", "favor", "l2"]
X = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 16))
RNGS = {"params": jax.random.PRNGKey(1),
        "random_features": jax.random.PRNGKey(2)}


def _module(kind, kernel="softmax", **kw):
  config = AttentionConfig(kind=kind, kernel=kernel, num_features=8)
  return MultiHeadAttention(num_heads=2, config=config, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_params_and_collections(kind):
  variables = nn.unbox(_module(kind, out_features=12).init(RNGS, X))
  shapes = jax.tree_util.tree_map(lambda a: a.shape, variables)
  if kind == "l2":
    assert set(shapes["params"]) == {"query", "value", "out"}
    assert shapes["params"]["query"] == {"kernel": (16, 2, 8)}
  else:
    assert set(shapes["params"]) == {"query", "key", "value", "out"}
    assert shapes["params"]["key"]["kernel"] == (16, 2, 8)
  assert shapes["params"]["out"]["kernel"] == (2, 8, 12)
  if kind == "favor":
    assert shapes["random_features"] == {"projection": (8, 8)}
  else:
    assert "random_features" not in variables
  y = _module(kind, out_features=12).apply(variables, X)
  assert y.shape == (2, 9, 12) and y.dtype == jnp.float32


def test_favor_module_computes_favor_of_its_projections():
  module = _module("favor", causal=True)
  variables = nn.unbox(module.init(RNGS, X))
  p = variables["params"]
  proj = lambda name: (jnp.einsum("bld,dhk->blhk", X, p[name]["kernel"]) +
                       p[name]["bias"])
  heads = favor_attention(proj("query"), proj("key"), proj("value"),
                          variables["random_features"]["projection"],
                          causal=True)
  expected = jnp.einsum("blhk,hko->blo", heads, p["out"]["kernel"]) + \
      p["out"]["bias"]
  np.testing.assert_allclose(module.apply(variables, X), expected, atol=1e-5)


def test_l2_weights_are_tied_and_value_path_uses_A_h():
  """L2-MHA(X) = [P_h X A_h W_V,h]_h W_O with A_h = W_Q,h W_Q,h^T / sqrt(D/H)."""
  module = _module("l2")
  variables = nn.unbox(module.init(RNGS, X))
  p = variables["params"]
  wq, wv = p["query"]["kernel"], p["value"]["kernel"]
  x = np.asarray(X[0], np.float64)
  outs = []
  for h in range(2):
    wq_h = np.asarray(wq[:, h], np.float64)
    q = x @ wq_h
    dist = ((q[:, None, :] - q[None, :, :]) ** 2).sum(-1)
    logits = -dist / np.sqrt(8)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    a_h = wq_h @ wq_h.T / np.sqrt(8)
    outs.append(prob @ x @ a_h @ np.asarray(wv[:, h], np.float64))
  expected = np.concatenate(outs, -1) @ np.asarray(
      p["out"]["kernel"]).reshape(16, 16) + np.asarray(p["out"]["bias"])
  np.testing.assert_allclose(module.apply(variables, X)[0], expected,
                             atol=1e-5)
  # Tied: changing W_Q changes the keys too, and there is no key kernel.
  assert "key" not in p
  grads = jax.grad(lambda params: module.apply(
      {"params": params}, X).sum())(p)
  assert set(grads) == {"query", "value", "out"}


@pytest.mark.parametrize("masked", [False, True])
def test_causal_cross_attention_with_fewer_queries(masked):
  """Lq = 4 queries after a 5-key prefix (Lk = 9), causal: query i sees keys
  0..i+5, against the float64 brute force of the module's projections."""
  module = _module("softmax", causal=True)
  xq = X[:, 5:] * 0.5 + 0.1  # not the keys' rows: any Lq inputs
  variables = nn.unbox(module.init(RNGS, xq, X))
  key_mask = (jnp.ones((2, 9), bool).at[0, 6].set(False).at[1, 2].set(False)
              if masked else None)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                             variables["params"])
  kv = np.asarray(X, np.float64)
  if masked:  # padded keys are zeroed before the projections
    kv = np.where(np.asarray(key_mask)[..., None], kv, 0.0)
  proj = lambda name, x: (np.einsum("bld,dhk->blhk", x, p[name]["kernel"])
                          + p[name]["bias"])
  heads = reference.softmax_attention(
      proj("query", np.asarray(xq, np.float64)), proj("key", kv),
      proj("value", kv), causal=True, key_mask=key_mask)
  expected = np.einsum("blhk,hko->blo", heads, p["out"]["kernel"]) + (
      p["out"]["bias"])
  out = module.apply(variables, xq, X, key_mask=key_mask)
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_result(kind):
  a = _module(kind).init(RNGS, X)
  b = _module(kind).init(RNGS, X)
  c = _module(kind).init({"params": jax.random.PRNGKey(7),
                          "random_features": jax.random.PRNGKey(8)}, X)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(_module(kind).apply(a, X),
                         _module(kind).apply(c, X))


def test_single_init_key_still_draws_features():
  module = _module("favor")
  v1 = module.init(jax.random.PRNGKey(3), X)
  v2 = module.init(jax.random.PRNGKey(3), X)
  np.testing.assert_array_equal(v1["random_features"]["projection"],
                                v2["random_features"]["projection"])


def test_redraw_changes_only_the_projection():
  module = _module("favor")
  variables = module.init(RNGS, X)
  redrawn = jax.jit(redraw_random_features)(variables, jax.random.PRNGKey(9))
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"],
                         redrawn["params"])
  old = variables["random_features"]["projection"]
  new = redrawn["random_features"]["projection"]
  assert old.shape == new.shape and not np.allclose(old, new)
  again = redraw_random_features(variables, jax.random.PRNGKey(9))
  np.testing.assert_array_equal(again["random_features"]["projection"], new)
  assert not np.allclose(module.apply(variables, X),
                         module.apply(redrawn, X))


def test_redraw_gives_stacked_layers_independent_draws():
  stacked = {"random_features": {"layers": {"projection":
                                            jnp.zeros((3, 8, 4))}}}
  new = redraw_random_features(stacked, jax.random.PRNGKey(0))
  proj = new["random_features"]["layers"]["projection"]
  assert proj.shape == (3, 8, 4)
  assert not np.allclose(proj[0], proj[1])
  # Rows within each 4x4 block are orthogonal (sqrt_d makes norms equal).
  sq = redraw_random_features(stacked, jax.random.PRNGKey(0),
                              scaling="sqrt_d")["random_features"]
  block = np.asarray(sq["layers"]["projection"][2, :4]) / 2.0
  np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_and_dropout(kind):
  module = _module(kind, dropout_rate=0.5)
  variables = module.init(RNGS, X)
  mask = jnp.ones((2, 9), bool).at[:, 6:].set(False)
  base = module.apply(variables, X, key_mask=mask)
  x2 = X.at[:, 6:].set(100.0)
  np.testing.assert_allclose(module.apply(variables, x2, key_mask=mask)[:, :6],
                             base[:, :6], atol=1e-5)
  dropped = module.apply(variables, X, deterministic=False,
                         rngs={"dropout": jax.random.PRNGKey(4)})
  assert not np.allclose(dropped, module.apply(variables, X))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_compute_fp32_params(kind):
  module = _module(kind, dtype=jnp.bfloat16)
  variables = nn.unbox(module.init(RNGS, X))
  assert all(a.dtype == jnp.float32
             for a in jax.tree_util.tree_leaves(variables))
  y = module.apply(variables, X)
  assert y.dtype == jnp.bfloat16 and np.isfinite(
      np.asarray(y, np.float32)).all()


@pytest.mark.parametrize("kind,kernel", [("softmax", "softmax"),
                                         ("favor", "softmax"),
                                         ("favor", "relu"), ("l2", "softmax")])
def test_decode_matches_full_forward(kind, kernel):
  full = _module(kind, kernel=kernel, causal=True)
  dec = _module(kind, kernel=kernel, causal=True, decode=True)
  variables = full.init(RNGS, X)
  expected = full.apply(variables, X)
  cache = dec.init(RNGS, X)["cache"]
  step = jax.jit(lambda cache, x: dec.apply({**variables, "cache": cache}, x,
                                            mutable=["cache"]))
  outs = []
  for t in range(X.shape[1]):
    out, mutated = step(cache, X[:, t:t + 1])
    cache = mutated["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), expected, atol=2e-5)


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match=r"config\.model\.attention\.kind"
                     r" must be one of \['softmax', 'favor', 'l2'\]"):
    _module("linear").init(RNGS, X)
  with pytest.raises(ValueError, match="divisible by num_heads"):
    MultiHeadAttention(num_heads=3).init(RNGS, X)
  with pytest.raises(ValueError, match="needs causal=True"):
    _module("favor", decode=True).init(RNGS, X)
  with pytest.raises(ValueError,
                     match=r"config\.model\.attention\.kernel must be "
                     "one of"):
    _module("favor", kernel="cos").init(RNGS, X)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_nan_in_padded_rows_reaches_no_real_gradient(kind, causal):
  """Self-attention with a key mask and a loss over real tokens: whatever
  padded rows hold, the parameters' and real inputs' gradients are those of
  clean padding (padded rows are zeroed before the projections)."""
  module = _module(kind, causal=causal)
  variables = nn.unbox(module.init(RNGS, X))
  mask = jnp.ones((2, 9), bool).at[0, 6:].set(False).at[1, 3:].set(False)
  weight = mask[:, :, None].astype(jnp.float32)

  def loss(params, x):
    y = module.apply({**variables, "params": params}, x, key_mask=mask)
    return jnp.sum(jnp.sin(y) * weight)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  clean = grad(variables["params"], jnp.where(mask[..., None], X, 0.0))
  poisoned = grad(variables["params"], jnp.where(mask[..., None], X,
                                                  jnp.nan))
  for a, b in zip(jax.tree_util.tree_leaves(poisoned),
                  jax.tree_util.tree_leaves(clean)):
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-6)
