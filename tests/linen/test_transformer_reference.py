"""The Transformer against a float64 NumPy forward pass written here.

Linen and NNX run the same `pnn.transformer.forward`, so comparing them
with each other cannot catch a mistake in it. This reference is written from
the documented architecture and the parameter tree only: token embedding +
positions, pre-LN blocks x + Attn(LN(x)), x + MLP(LN(x)) with exact softmax
attention and a gelu MLP, a final LayerNorm and the tied output embedding
scaled by 1/sqrt(D). Every weight is perturbed away from its initializer
(non-zero biases, LayerNorm scales != 1), so none can be dropped unnoticed.
"""

import math

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax import linen as pnn
from performer_jax import nnx as pnnx
from tests.helpers import inputs
from tests.helpers import reference
from tests.helpers.compare import assert_close

VOCAB, BATCH, LEN = inputs.MODEL_VOCAB, inputs.MODEL_BATCH, inputs.MODEL_LEN
LN_EPS = 1e-6  # flax's LayerNorm default, in Linen and NNX


def layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + LN_EPS) * p["scale"] + p["bias"]


def gelu(x):
  """The tanh form of gelu (flax's `nn.gelu` default)."""
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi)
                                * (x + 0.044715 * x ** 3)))


def sinusoidal(length, dim):
  half = dim // 2
  angle = np.arange(length)[:, None] * 1e4 ** (-np.arange(half) / half)
  return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def attention(x, p, key_mask, causal):
  """Self-attention block: padded rows are zeroed before the projections
  and their outputs are 0 before the output projection (documented in
  nn/core.py); exact softmax over the visible keys."""
  x = np.where(key_mask[..., None], x, 0.0)
  proj = lambda name: (np.einsum("bld,dhk->blhk", x, p[name]["kernel"])
                       + p[name]["bias"])
  heads = reference.softmax_attention(proj("query"), proj("key"),
                                      proj("value"), causal, key_mask)
  heads = np.where(key_mask[:, :, None, None], heads, 0.0)
  return np.einsum("blhk,hko->blo", heads, p["out"]["kernel"]) + (
      p["out"]["bias"])


def forward(params, tokens, key_mask, *, causal, num_layers, posemb):
  """float64 logits [B, L, V] of the pre-LN Transformer in `params`."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(params))
  table = p["token_embed"]["embedding"]
  length, dim = tokens.shape[1], table.shape[1]
  pos = (p["pos_embed"]["pos_embedding"][:length] if posemb == "learned"
         else sinusoidal(length, dim))
  x = table[tokens] + pos
  for i in range(num_layers):
    block = p[f"layer_{i}"]
    x = x + attention(layer_norm(x, block["ln_attention"]),
                      block["attention"], key_mask, causal)
    mlp = block["mlp"]
    h = layer_norm(x, block["ln_mlp"]) @ mlp["wi"]["kernel"] + mlp["wi"]["bias"]
    x = x + gelu(h) @ mlp["wo"]["kernel"] + mlp["wo"]["bias"]
  return layer_norm(x, p["ln_final"]) @ table.T / math.sqrt(dim)


def perturbed(params, seed):
  """Every leaf moved off its initial value: biases become non-zero and
  LayerNorm scales differ from 1."""
  leaves, treedef = jax.tree.flatten(nn.unbox(params))
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      leaf + 0.2 * jax.random.normal(k, leaf.shape, leaf.dtype)
      for leaf, k in zip(leaves, keys)])


def batch(seed):
  """Tokens [B, L] and a key mask with holes (the first position real)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (BATCH, LEN)).astype(np.int32)
  mask = rng.random((BATCH, LEN)) < 0.7
  mask[:, 0] = True
  return tokens, mask


CASES = {"encoder": dict(causal=False, posemb="learned"),
         "decoder": dict(causal=True, posemb="sinusoidal")}


def config(posemb):
  cfg = inputs.tiny_model_config("softmax", posemb=posemb)
  assert cfg.num_layers == 2
  return cfg


@pytest.mark.parametrize("case", list(CASES))
def test_linen_model_matches_numpy_reference(case):
  causal, posemb = CASES[case]["causal"], CASES[case]["posemb"]
  model = pnn.make_model(config(posemb), vocab_size=VOCAB, causal=causal)
  params = perturbed(model.init(jax.random.PRNGKey(0),
                                jnp.zeros((BATCH, LEN), jnp.int32))["params"],
                     seed=1)
  tokens, mask = batch(2)
  logits = jax.jit(model.apply)({"params": params}, tokens, key_mask_BL=mask)
  want = forward(params, tokens, mask, causal=causal, num_layers=2,
                 posemb=posemb)
  # float32 through two blocks: ~1e-6 of the logits' scale.
  assert_close(logits, want, tol=2e-5)
  # The mask matters here: without it the reference differs by far more.
  unmasked = forward(params, tokens, np.ones_like(mask), causal=causal,
                     num_layers=2, posemb=posemb)
  assert np.abs(unmasked - want).max() > 1e-2 * np.abs(want).max()


@pytest.mark.parametrize("case", list(CASES))
def test_nnx_model_matches_numpy_reference(case):
  causal, posemb = CASES[case]["causal"], CASES[case]["posemb"]
  model = pnnx.make_model(config(posemb), vocab_size=VOCAB, causal=causal,
                          rngs=nnx.Rngs(params=3))
  params = perturbed(pnnx.to_linen_variables(model)["params"], seed=4)
  pnnx.update_from_linen(model, {"params": params})
  model.eval()
  tokens, mask = batch(5)
  logits = nnx.jit(lambda m, x, k: m(x, key_mask_BL=k))(model, tokens, mask)
  want = forward(params, tokens, mask, causal=causal, num_layers=2,
                 posemb=posemb)
  assert_close(logits, want, tol=2e-5)
