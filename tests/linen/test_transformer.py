"""Tests for performer_jax.linen.transformer (and the model config)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from performer_jax import linen as pnn
from performer_jax.core import embeddings
from tests.helpers import inputs

VOCAB, BATCH, LEN = inputs.MODEL_VOCAB, inputs.MODEL_BATCH, inputs.MODEL_LEN
KINDS = inputs.MODEL_KINDS
tiny_config = inputs.tiny_model_config


def init_variables(model, seed=0):
  rngs = {"params": jax.random.PRNGKey(seed),
          "random_features": jax.random.PRNGKey(seed + 1)}
  return model.init(rngs, jnp.zeros((BATCH, LEN), jnp.int32))


@functools.lru_cache(maxsize=None)
def built(kind, causal, **overrides):
  """(model, variables, apply) shared across tests.

  Init and apply run eagerly: for these tiny models, dispatching cached
  per-op kernels is several times cheaper than compiling a jit per model.
  """
  model = pnn.make_model(tiny_config(kind, **overrides), vocab_size=VOCAB,
                            causal=causal)
  variables = init_variables(model)
  apply = lambda v, x, m: model.apply(v, x, key_mask_BL=m)
  return model, variables, apply


def random_tokens(seed, shape=(BATCH, LEN)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB,
                            dtype=jnp.int32)


FULL_MASK = jnp.ones((BATCH, LEN), bool)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_shapes_dtypes_and_variables(kind, causal):
  model, variables, apply = built(kind, causal)
  logits = apply(variables, random_tokens(0), FULL_MASK)
  assert logits.shape == (BATCH, LEN, VOCAB)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  params = nn.unbox(variables["params"])
  assert params["token_embed"]["embedding"].shape == (VOCAB, 32)
  assert params["pos_embed"]["pos_embedding"].shape == (LEN, 32)
  assert params["layer_1"]["mlp"]["wi"]["kernel"].shape == (32, 64)
  assert params["layer_1"]["mlp"]["wo"]["kernel"].shape == (64, 32)
  assert "layer_2" not in params
  has_projection = KINDS[kind].get("num_features", 0) > 0
  assert ("random_features" in variables) == has_projection
  if has_projection:
    proj0 = variables["random_features"]["layer_0"]["attention"]["projection"]
    proj1 = variables["random_features"]["layer_1"]["attention"]["projection"]
    assert proj0.shape == (16, 16) and proj0.dtype == jnp.float32
    assert not np.allclose(proj0, proj1), "layers must get their own features"


@pytest.mark.parametrize("kind", list(KINDS))
def test_decoder_is_causal_encoder_is_not(kind):
  t = 9
  x = random_tokens(1)
  x_changed = x.at[:, t].set((x[:, t] + 1) % VOCAB)
  for causal in (True, False):
    _, variables, apply = built(kind, causal)
    logits = apply(variables, x, FULL_MASK)
    logits_changed = apply(variables, x_changed, FULL_MASK)
    before = np.abs(logits[:, :t] - logits_changed[:, :t]).max()
    after = np.abs(logits[:, t:] - logits_changed[:, t:]).max()
    assert after > 1e-3, "changing a token must change later logits"
    if causal:
      assert before < 1e-5, f"decoder leaks the future: {before}"
    else:
      assert before > 1e-3, "encoder must attend to later tokens"


@pytest.mark.parametrize("kind", list(KINDS))
def test_encoder_ignores_padded_tokens(kind):
  _, variables, apply = built(kind, False)
  num_real = 11
  mask = jnp.broadcast_to(jnp.arange(LEN) < num_real, (BATCH, LEN))
  x = random_tokens(2)
  x_other_pad = jnp.where(mask, x, (x + 5) % VOCAB)
  logits = apply(variables, x, mask)
  logits_other_pad = apply(variables, x_other_pad, mask)
  np.testing.assert_allclose(logits[:, :num_real],
                             logits_other_pad[:, :num_real], atol=1e-5)
  # Without the mask the padded ids do matter, so the test above is not
  # vacuous.
  unmasked = apply(variables, x, FULL_MASK)
  unmasked_other = apply(variables, x_other_pad, FULL_MASK)
  diff = unmasked[:, :num_real] - unmasked_other[:, :num_real]
  assert np.abs(diff).max() > 1e-3


def test_padding_equals_truncation():
  model, variables, apply = built("favor_softmax", False)
  num_real = 11
  mask = jnp.broadcast_to(jnp.arange(LEN) < num_real, (BATCH, LEN))
  x = random_tokens(3)
  padded = apply(variables, x, mask)[:, :num_real]
  truncated = model.apply(variables, x[:, :num_real])
  np.testing.assert_allclose(padded, truncated, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "favor_softmax"])
def test_bf16_compute_with_fp32_params(kind):
  _, variables32, apply32 = built(kind, True)
  _, variables16, apply16 = built(kind, True, dtype="bfloat16")
  for leaf in jax.tree.leaves(nn.unbox(variables16["params"])):
    assert leaf.dtype == jnp.float32
  x = random_tokens(4)
  logits16 = apply16(variables32, x, FULL_MASK)
  logits32 = apply32(variables32, x, FULL_MASK)
  assert logits16.dtype == jnp.float32
  assert np.all(np.isfinite(logits16))
  # Same parameters, so bf16 logits are a rounding of the fp32 ones.
  scale = np.abs(logits32).max()
  assert np.abs(logits16 - logits32).max() < 0.1 * scale
  assert np.corrcoef(np.ravel(logits16), np.ravel(logits32))[0, 1] > 0.99


def test_bf16_params():
  _, variables, apply = built("favor_relu", False, dtype="bfloat16",
                              param_dtype="bfloat16")
  for leaf in jax.tree.leaves(nn.unbox(variables["params"])):
    assert leaf.dtype == jnp.bfloat16
  logits = apply(variables, random_tokens(5), FULL_MASK)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def make(kind, causal, **overrides):
  return pnn.make_model(tiny_config(kind, **overrides), vocab_size=VOCAB,
                           causal=causal)


@pytest.mark.parametrize("kind", ["favor_softmax", "l2"])
def test_scan_layers_stacks_and_matches_loop(kind):
  model, variables, apply = built(kind, True)
  scan_model = make(kind, True, scan_layers=True)
  scan_shapes = jax.eval_shape(lambda: init_variables(scan_model))
  converted = inputs.to_scan_layout(variables)
  assert (jax.tree.map(lambda x: x.shape, nn.unbox(scan_shapes))
          == jax.tree.map(lambda x: x.shape, converted))
  # With the loop model's variables stacked, the scan model must compute
  # exactly the loop model's function.
  x = random_tokens(6)
  np.testing.assert_allclose(scan_model.apply(converted, x),
                             apply(variables, x, FULL_MASK),
                             atol=1e-5, rtol=1e-5)
  del model


def test_scan_layers_draws_features_per_layer():
  scan_model = make("favor_softmax", True, scan_layers=True)
  variables = init_variables(scan_model)
  proj = variables["random_features"]["layers"]["attention"]["projection"]
  assert proj.shape == (2, 16, 16) and proj.dtype == jnp.float32
  assert not np.allclose(proj[0], proj[1]), "layers need own features"
  wi = nn.unbox(variables["params"])["layers"]["mlp"]["wi"]["kernel"]
  assert not np.allclose(wi[0], wi[1]), "layers need own parameters"
  # The trainer's redraw keeps the stacked layout with per-layer draws.
  redrawn = pnn.redraw_random_features(variables, jax.random.PRNGKey(9))
  new = redrawn["random_features"]["layers"]["attention"]["projection"]
  assert new.shape == proj.shape
  assert not np.allclose(new, proj) and not np.allclose(new[0], new[1])
  logits = scan_model.apply(redrawn, random_tokens(11))
  assert np.all(np.isfinite(logits))


def loss_fn(model, params, other, batch, rng):
  logits = model.apply({"params": params, **other}, batch["inputs"],
                       key_mask_BL=batch["key_mask"], deterministic=False,
                       rngs={"dropout": rng})
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  return nll.mean()


@pytest.mark.parametrize("scan_layers,remat", [(False, False), (True, True)])
def test_training_reduces_loss(scan_layers, remat):
  _, variables, _ = built("favor_softmax", True)
  model = make("favor_softmax", True, scan_layers=scan_layers, remat=remat)
  if scan_layers:
    variables = inputs.to_scan_layout(variables)
  params = variables["params"]
  other = {k: v for k, v in variables.items() if k != "params"}
  x = random_tokens(7)
  batch = {"inputs": x, "targets": jnp.roll(x, -1, axis=1),
           "key_mask": FULL_MASK}

  @jax.jit
  def step(params, rng):
    loss, grads = jax.value_and_grad(
        functools.partial(loss_fn, model))(params, other, batch, rng)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return params, loss, grads

  losses = []
  for i in range(6):
    params, loss, grads = step(params, jax.random.PRNGKey(i))
    if i == 0:
      for g in jax.tree.leaves(nn.unbox(grads)):
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.1, losses


def test_remat_gives_same_values():
  _, variables, apply = built("favor_softmax", True)
  remat_model = make("favor_softmax", True, remat=True)
  x = random_tokens(8)
  # Eager against jitted: the same math in another float32 order.
  np.testing.assert_allclose(remat_model.apply(variables, x),
                             apply(variables, x, FULL_MASK), atol=1e-5)


def test_dropout_only_when_not_deterministic():
  model, variables, _ = built("softmax", False)
  x = random_tokens(9)
  apply = lambda det, seed: model.apply(
      variables, x, deterministic=det,
      rngs={"dropout": jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(apply(True, 0), apply(True, 1))
  assert np.abs(apply(False, 0) - apply(False, 1)).max() > 1e-3


def test_sinusoidal_position_table():
  table = embeddings.sinusoidal_table(LEN, 32)
  pos, i = 5, 3
  np.testing.assert_allclose(table[pos, i], np.sin(pos / 1e4 ** (i / 16)),
                             rtol=1e-6)
  np.testing.assert_allclose(table[pos, 16 + i],
                             np.cos(pos / 1e4 ** (i / 16)), rtol=1e-6)
  _, variables, apply = built("softmax", True, posemb="sinusoidal")
  assert "pos_embed" not in variables["params"]
  assert np.all(np.isfinite(apply(variables, random_tokens(10), FULL_MASK)))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logical_partitioning_maps_to_mesh(scan_layers):
  model = make("favor_softmax", True, scan_layers=scan_layers)
  abstract = jax.eval_shape(lambda: init_variables(model))
  is_boxed = lambda x: isinstance(x, nn.Partitioned)
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      abstract["params"], is_leaf=is_boxed):
    if "attention" in jax.tree_util.keystr(path):
      continue  # annotated by MultiHeadAttention, tested with it
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim, path
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  shardings = nn.logical_to_mesh_sharding(
      nn.get_partition_spec(abstract), mesh, pnn.LOGICAL_AXIS_RULES)
  params = shardings["params"]
  layer = params["layers"] if scan_layers else params["layer_0"]
  lead = (None,) if scan_layers else ()
  assert tuple(layer["mlp"]["wi"]["kernel"].spec) == lead + (None, "model")
  assert tuple(layer["mlp"]["wo"]["kernel"].spec) == lead + ("model", None)
  assert tuple(params["token_embed"]["embedding"].spec) in ((), (None, None))


BAD_CONFIGS = [
    (lambda c: setattr(c, "num_experts", 4), "num_experts"),
    (lambda c: c.__delattr__("mlp_dim"), "mlp_dim"),
    (lambda c: setattr(c, "posemb", "rope"), "posemb"),
    (lambda c: setattr(c, "dtype", "float16"), "dtype"),
    (lambda c: setattr(c, "param_dtype", "int8"), "param_dtype"),
    (lambda c: setattr(c, "num_layers", 0), "num_layers"),
    (lambda c: setattr(c, "num_heads", 3), "num_heads"),
    (lambda c: setattr(c, "dropout_rate", 1.5), "dropout_rate"),
    (lambda c: setattr(c, "scan_layers", None), "scan_layers"),
    (lambda c: setattr(c.attention, "kind", "linear"), "kind"),
    (lambda c: setattr(c.attention, "kernel", "gauss"), "kernel"),
    (lambda c: setattr(c.attention, "scaling", "unit"), "scaling"),
    (lambda c: setattr(c.attention, "chunk_size", 0), "chunk_size"),
    (lambda c: setattr(c.attention, "implementation", "scan"),
     "implementation"),
    (lambda c: setattr(c.attention, "num_features", 0), "num_features"),
    (lambda c: setattr(c.attention, "window", 4), "window"),
]


@pytest.mark.parametrize("mutate,key", BAD_CONFIGS,
                         ids=[key for _, key in BAD_CONFIGS])
def test_bad_config_rejected(mutate, key):
  cfg = tiny_config("favor_softmax")
  with cfg.unlocked():
    mutate(cfg)
  with pytest.raises(ValueError, match=key):
    pnn.make_model(cfg, vocab_size=VOCAB, causal=True)


def test_bad_arguments_rejected():
  cfg = tiny_config()
  with pytest.raises(ValueError, match="causal"):
    pnn.make_model(cfg, vocab_size=VOCAB, causal=False, decode=True)
  with pytest.raises(ValueError, match="vocab_size"):
    pnn.make_model(cfg, vocab_size=0, causal=True)
  model, variables, _ = built("softmax", True)
  with pytest.raises(ValueError, match="max_len"):
    model.apply(variables, jnp.zeros((1, LEN + 1), jnp.int32))
  with pytest.raises(ValueError, match="integer token ids"):
    model.apply(variables, jnp.zeros((1, LEN), jnp.float32))
  with pytest.raises(ValueError, match="key_mask"):
    model.apply(variables, jnp.zeros((1, LEN), jnp.int32),
                key_mask_BL=jnp.ones((1, LEN - 1), bool))


def test_default_config_is_valid_and_accepts_none_features():
  cfg = pnn.ModelConfig.defaults()
  assert pnn.ModelConfig.parse(cfg) == pnn.ModelConfig()
  cfg.attention.kernel = "relu"
  cfg.attention.num_features = None
  model = pnn.make_model(cfg, vocab_size=VOCAB, causal=False)
  assert model.config.attention.num_features is None
