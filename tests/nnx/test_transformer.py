"""Tests for performer_jax.nnx's Transformer: the Linen model's tree and
function on the same weights, causality, padding, gradients, training with
nnx.Optimizer, random features, decoding and the converter."""

import functools

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from performer_jax import linen as pnn
from performer_jax import nnx as pnnx
from tests.helpers import inputs
from tests.helpers.compare import assert_close
from tests.helpers.compare import assert_trees_close

VOCAB = 13
BATCH = 2
LEN = 16
KIND_OPTIONS = inputs.MODEL_KINDS
KINDS = list(KIND_OPTIONS)
SCANNED = dict(scan_layers=True, remat=True)


def config(kind, **overrides):
  return inputs.tiny_model_config(kind, max_len=LEN, **overrides)


def tokens(seed, shape=(BATCH, LEN)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB,
                            dtype=jnp.int32)


@functools.lru_cache(maxsize=None)
def built(kind, causal, **overrides):
  """(NNX model in eval mode, the Linen model, the NNX model's variables in
  Linen form), shared; tests that mutate the model work on
  `nnx.clone(model)`. A scanned model gets the loop model's weights,
  stacked, so that it computes the loop model's function."""
  cfg = config(kind, **overrides)
  linen = pnn.make_model(cfg, vocab_size=VOCAB, causal=causal)
  model = pnnx.make_model(cfg, vocab_size=VOCAB, causal=causal,
                          rngs=nnx.Rngs(params=2, random_features=3))
  if overrides.get("scan_layers"):
    pnnx.update_from_linen(model, inputs.to_scan_layout(built(kind, causal)[2]))
  model.eval()
  return model, linen, pnnx.to_linen_variables(model)


# The attention modules' own trees, every kind, are tested in test_attention.
@pytest.mark.parametrize("kind,overrides", [
    ("favor_softmax", {}), ("favor_softmax", SCANNED),
    ("l2", dict(scan_layers=True, posemb="sinusoidal"))])
def test_own_init_has_the_linen_tree_and_logical_axes(kind, overrides):
  cfg = config(kind, **overrides)
  make = lambda: pnnx.make_model(cfg, vocab_size=VOCAB, causal=True,
                                 rngs=nnx.Rngs(0))
  # Shapes and metadata need no values, except the features' draws.
  model = make() if "num_features" in KIND_OPTIONS[kind] else (
      nnx.eval_shape(make))
  linen = pnn.make_model(cfg, vocab_size=VOCAB, causal=True)
  boxed = jax.eval_shape(linen.init, jax.random.PRNGKey(0),
                         jnp.zeros((BATCH, LEN), jnp.int32))
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(pnnx.to_linen_variables(model)) == shapes(nn.unbox(boxed))
  # Every parameter carries the Linen parameter's logical axis names
  # ("layers" first when scanned).
  names = nnx.to_pure_dict(jax.tree.map(
      lambda v: v.get_metadata()["out_sharding"],
      nnx.state(model, nnx.Param),
      is_leaf=lambda v: isinstance(v, nnx.Variable)))
  assert names == jax.tree.map(tuple, nn.get_partition_spec(boxed)["params"])
  features = pnnx.to_linen_variables(model).get("random_features")
  if features and overrides:
    projection = features["layers"]["attention"]["projection"]
    assert not np.allclose(projection[0], projection[1]), "layers share"
  elif features:
    assert not np.allclose(features["layer_0"]["attention"]["projection"],
                           features["layer_1"]["attention"]["projection"])


# Every kind causal; the encoder for FAVOR+ and L2 (test_attention compares
# every kind of layer, causal and not).
@pytest.mark.parametrize("kind,causal", [(kind, True) for kind in KINDS] + [
    ("favor_softmax", False), ("l2", False)])
def test_equals_linen_on_the_same_weights(kind, causal):
  model, linen, variables = built(kind, causal)
  x = tokens(0)
  mask = jnp.broadcast_to(jnp.arange(LEN) < 11, (BATCH, LEN))
  logits = model(x, key_mask_BL=mask)
  assert logits.shape == (BATCH, LEN, VOCAB) and logits.dtype == jnp.float32
  assert_close(logits, linen.apply(variables, x, key_mask_BL=mask), tol=1e-6)


@pytest.mark.parametrize("kind", ["favor_softmax", "l2"])
def test_scanned_and_rematerialized_equals_the_loop(kind):
  model = built(kind, True, **SCANNED)[0]
  _, linen, variables = built(kind, True)
  x = tokens(1)
  expected = linen.apply(variables, x)
  # The loop model's Linen function, eager and jitted (another float32 order).
  assert_close(model(x), expected, tol=1e-5)
  assert_close(nnx.jit(lambda m, x: m(x))(model, x), expected, tol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_is_causal_encoder_is_not(kind):
  t = 9
  x = tokens(1)
  x_changed = x.at[:, t].set((x[:, t] + 1) % VOCAB)
  for causal in (True, False):
    model = built(kind, causal)[0]
    diff = np.abs(model(x) - model(x_changed))
    assert diff[:, t:].max() > 1e-3
    if causal:
      assert diff[:, :t].max() < 1e-5, "decoder leaks the future"
    else:
      assert diff[:, :t].max() > 1e-3, "encoder must see later tokens"


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_ignores_padded_tokens(kind):
  model = built(kind, False)[0]
  mask = jnp.broadcast_to(jnp.arange(LEN) < 11, (BATCH, LEN))
  x = tokens(2)
  other = jnp.where(mask, x, (x + 5) % VOCAB)
  assert_close(model(other, key_mask_BL=mask)[:, :11],
               model(x, key_mask_BL=mask)[:, :11], tol=1e-6)
  assert np.abs(model(other)[:, :11] - model(x)[:, :11]).max() > 1e-3


def loss_fn(logits_BLV, x_BL):
  logp = jax.nn.log_softmax(logits_BLV)
  targets = jnp.roll(x_BL, -1, axis=1)
  return -jnp.take_along_axis(logp, targets[..., None], -1).mean()


def test_training_step_with_optimizer_and_redraw():
  model = nnx.clone(built("favor_softmax", True)[0])
  model.train()  # dropout on: its streams live in the model
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = tokens(4)

  @nnx.jit
  def step(model, optimizer, rng, redraw):
    loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(x), x))(model)
    optimizer.update(model, grads)
    nnx.cond(redraw, lambda m: pnnx.redraw_random_features(m, rng),
             lambda m: None, model)
    return loss, grads

  features = pnnx.to_linen_variables(model)["random_features"]
  params = pnnx.to_linen_variables(model)["params"]
  losses = []
  for i in range(3):
    loss, grads = step(model, optimizer, jax.random.PRNGKey(i), False)
    losses.append(float(loss))
  # Gradients reach every parameter (and only parameters).
  assert set(nnx.to_pure_dict(grads)) == set(params)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  assert losses[-1] < losses[0] - 0.1, losses
  after = pnnx.to_linen_variables(model)
  jax.tree.map(np.testing.assert_array_equal, after["random_features"],
               features)
  assert not np.allclose(after["params"]["token_embed"]["embedding"],
                         params["token_embed"]["embedding"])
  # Redrawn inside the jitted step: exactly the Linen redraw of the same
  # variables, and only the features change.
  step(model, optimizer, jax.random.PRNGKey(9), True)
  expected = pnn.redraw_random_features(after, jax.random.PRNGKey(9))
  jax.tree.map(np.testing.assert_array_equal,
               pnnx.to_linen_variables(model)["random_features"],
               expected["random_features"])


# Each kind of layer decodes in test_attention; here the model: positions,
# layers, the scanned cache.
DECODE_CASES = [("softmax", {}), ("favor_softmax", {}),
                ("favor_softmax", SCANNED), ("l2", dict(posemb="sinusoidal"))]


@pytest.mark.parametrize(
    "kind,overrides", DECODE_CASES,
    ids=[kind + "".join(f"-{k}" for k in o) for kind, o in DECODE_CASES])
def test_decode_under_jit_equals_full_forward(kind, overrides):
  model = built(kind, True, **overrides)[0]
  x = tokens(5)
  decoder = nnx.clone(model)
  decoder.set_attributes(decode=True)
  decoder.init_cache(BATCH, LEN)
  step = nnx.jit(lambda m, x_B1: m(x_B1))
  stepped = jnp.concatenate([step(decoder, x[:, t:t + 1])
                             for t in range(LEN)], 1)
  # Two layers of float32 in another order (and a layer norm): 1e-4.
  assert_close(stepped, model(x), tol=1e-4)
  # A prompt's prefill (several tokens per call) continues the same way.
  prefilled = nnx.clone(model)
  prefilled.set_attributes(decode=True)
  prefilled.init_cache(BATCH, LEN)
  chunks = [step(prefilled, x[:, :9]), step(prefilled, x[:, 9:10]),
            step(prefilled, x[:, 10:])]
  assert_close(jnp.concatenate(chunks, 1), stepped, tol=1e-4)
  caches = pnnx.to_linen_variables(decoder)["cache"]
  indices = [np.ravel(leaf) for path, leaf in
             jax.tree_util.tree_leaves_with_path(caches)
             if "cache_index" in jax.tree_util.keystr(path)]
  # The position embedding's and every layer's (stacked when scanned).
  assert np.concatenate(indices).tolist() == [LEN] * 3


def test_decode_cache_is_the_linen_cache():
  # FAVOR+'s state; the key-value caches are compared in test_attention.
  model, linen, variables = built("favor_softmax", True)
  x = tokens(6, (BATCH, 5))
  decoder = pnnx.make_model(model.config, vocab_size=VOCAB, causal=True,
                            decode=True, rngs=nnx.Rngs(0))
  nnx.update(decoder, nnx.state(model, nnx.Any(nnx.Param,
                                               pnnx.RandomFeatures)))
  decoder.eval()
  decoder.init_cache(BATCH, LEN)
  # A fresh cache is laid out as Linen's init_cache lays it out, and Linen
  # decodes from it.
  linen_decoder = linen.clone(decode=True)
  cache = pnnx.to_linen_variables(decoder)["cache"]
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(cache) == shapes(jax.eval_shape(
      lambda v: pnn.init_cache(linen_decoder, v, BATCH, LEN),
      variables)["cache"])
  ours = jnp.concatenate([decoder(x[:, t:t + 1]) for t in range(5)], 1)
  logits = []
  for t in range(5):
    logits_BV, cache = pnn.decode_step(
        linen_decoder, {**variables, "cache": cache}, x[:, t:t + 1])
    logits.append(logits_BV[:, None])
  assert_close(ours, jnp.concatenate(logits, 1), tol=1e-5)
  assert_trees_close(pnnx.to_linen_variables(decoder)["cache"],
                     jax.tree.map(np.asarray, cache), tol=1e-5)
  # Linen's cache loaded into the NNX model continues where Linen stopped.
  pnnx.update_from_linen(decoder, {"cache": cache})
  next_B1 = tokens(7, (BATCH, 1))
  linen_next, _ = pnn.decode_step(
      linen_decoder, {**variables, "cache": cache}, next_B1)
  assert_close(decoder(next_B1)[:, 0], linen_next, tol=1e-5)


def test_linen_init_loads_and_errors_are_named():
  model, linen, _ = built("favor_softmax", True)
  x = tokens(8)
  # A Linen init (boxed, as a trainer holds it) loaded into a fresh model.
  boxed = linen.init({"params": jax.random.PRNGKey(0),
                      "random_features": jax.random.PRNGKey(1)}, x)
  fresh = pnnx.make_model(model.config, vocab_size=VOCAB, causal=True,
                          rngs=nnx.Rngs(5))
  fresh.eval()
  pnnx.update_from_linen(fresh, boxed)
  assert_close(fresh(x), linen.apply(boxed, x), tol=1e-6)
  assert set(pnnx.to_linen_variables(fresh)) == {"params", "random_features"}
  variables = pnnx.to_linen_variables(model)
  with pytest.raises(ValueError, match="unknown Linen collection 'stats'"):
    pnnx.update_from_linen(fresh, {"stats": {}})
  scanned = inputs.to_scan_layout(variables)
  with pytest.raises(ValueError, match=r"missing .*params/layer_0/.*not in "
                     r"the NNX model \['params/layers/"):
    pnnx.update_from_linen(fresh, scanned)
  wrong = jax.tree.map(lambda a: a, variables)
  wrong["params"]["ln_final"]["scale"] = jnp.ones((3,))
  with pytest.raises(ValueError, match=r"params/ln_final/scale: the Linen "
                     r"variable is float32 \(3,\)"):
    pnnx.update_from_linen(fresh, wrong)
  with pytest.raises(ValueError, match=r"init_cache\(batch_size, max_len\) "
                     "before"):
    pnnx.update_from_linen(fresh, {"cache": {"pos_embed": {
        "cache_index": jnp.zeros((), jnp.int32)}}})
  # Nothing was half-loaded: the failed updates left the model as it was.
  assert_close(fresh(x), linen.apply(boxed, x), tol=1e-6)


def test_bad_arguments_rejected():
  cfg = config("favor_softmax")
  make = functools.partial(pnnx.make_model, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="causal"):
    make(cfg, vocab_size=VOCAB, causal=False, decode=True)
  with pytest.raises(ValueError, match="vocab_size"):
    make(cfg, vocab_size=0, causal=True)
  bad = config("favor_softmax")
  with bad.unlocked():
    bad.attention.kind = "linear"
  with pytest.raises(ValueError, match="kind"):
    make(bad, vocab_size=VOCAB, causal=True)
  model = built("softmax", True)[0]
  with pytest.raises(ValueError, match="max_len"):
    model(jnp.zeros((1, LEN + 1), jnp.int32))
  with pytest.raises(ValueError, match="integer token ids"):
    model(jnp.zeros((1, LEN), jnp.float32))
  with pytest.raises(ValueError, match="key_mask"):
    model(jnp.zeros((1, LEN), jnp.int32), key_mask_BL=jnp.ones((1, 3), bool))
  with pytest.raises(ValueError, match="max_len"):
    nnx.clone(model).init_cache(BATCH, LEN + 1)
  decoder = nnx.clone(model)
  decoder.set_attributes(decode=True)
  with pytest.raises(ValueError, match="init_cache"):
    decoder(jnp.zeros((BATCH, 1), jnp.int32))
  decoder.init_cache(BATCH, LEN)
  with pytest.raises(ValueError, match="exceeds model.max_len"):
    decoder(jnp.zeros((BATCH, LEN + 1), jnp.int32))


def test_bf16_compute_and_params():
  cfg = config("favor_relu", dtype="bfloat16", param_dtype="bfloat16")
  model = nnx.eval_shape(lambda: pnnx.make_model(
      cfg, vocab_size=VOCAB, causal=True, rngs=nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(leaf.dtype == jnp.bfloat16 for leaf in params)
  features = jax.tree.leaves(nnx.state(model, pnnx.RandomFeatures))
  assert features and all(leaf.dtype == jnp.float32 for leaf in features)
  logits = nnx.eval_shape(lambda m: m(tokens(9), deterministic=True), model)
  assert logits.dtype == jnp.float32 and logits.shape == (BATCH, LEN, VOCAB)
