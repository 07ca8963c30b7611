"""Tests for performer_jax.linen.decoding."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax import linen as pnn
from tests.helpers import inputs

VOCAB, BATCH, LEN = inputs.MODEL_VOCAB, inputs.MODEL_BATCH, inputs.MODEL_LEN
KINDS = inputs.MODEL_KINDS
tiny_config = inputs.tiny_model_config


@functools.lru_cache(maxsize=None)
def built(kind, **overrides):
  """(train model, decode model, variables of the train model), shared.

  Scanned models reuse the loop model's variables, stacked, instead of
  running another init.
  """
  cfg = tiny_config(kind, **overrides)
  model = pnn.make_model(cfg, vocab_size=VOCAB, causal=True)
  decode_model = pnn.make_model(cfg, vocab_size=VOCAB, causal=True,
                                   decode=True)
  if overrides.get("scan_layers"):
    loop_overrides = {k: v for k, v in overrides.items()
                      if k not in ("scan_layers", "remat")}
    variables = inputs.to_scan_layout(nn.unbox(built(kind, **loop_overrides)[2]))
  else:
    rngs = {"params": jax.random.PRNGKey(0),
            "random_features": jax.random.PRNGKey(1)}
    init = model.init
    if overrides.get("attention_implementation") in ("parallel", "pallas"):
      init = jax.jit(init)  # op by op, a prefix or a kernel takes seconds
    variables = init(rngs, jnp.zeros((BATCH, LEN), jnp.int32))
  return model, decode_model, variables


def random_tokens(seed, shape=(BATCH, LEN)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB,
                            dtype=jnp.int32)


DECODE_CASES = [(kind, {}) for kind in KINDS] + [
    ("favor_softmax", dict(scan_layers=True, remat=True)),
    ("l2", dict(posemb="sinusoidal")),
]


@pytest.mark.parametrize(
    "kind,overrides", DECODE_CASES,
    ids=[kind + "".join(f"-{k}" for k in o) for kind, o in DECODE_CASES])
def test_token_by_token_matches_full_forward(kind, overrides):
  model, decode_model, variables = built(kind, **overrides)
  x = random_tokens(0)
  full = model.apply(variables, x)
  decode_vars = pnn.init_cache(decode_model, variables, BATCH, LEN)
  stepped, _ = pnn.decode_logits(decode_model, decode_vars, x)
  assert stepped.shape == full.shape and stepped.dtype == jnp.float32
  scale = np.abs(full).max()
  np.testing.assert_allclose(stepped, full, atol=1e-4 * scale, rtol=1e-4)


PREFILL_CASES = DECODE_CASES + [
    ("favor_softmax", dict(attention_chunk_size=3,
                           attention_implementation="parallel")),
    ("favor_softmax", dict(attention_chunk_size=4,
                           attention_implementation="pallas"))]


@pytest.mark.parametrize(
    "kind,overrides", PREFILL_CASES,
    ids=[kind + "".join(f"-{k}" for k in o) for kind, o in PREFILL_CASES])
def test_prefill_equals_token_by_token(kind, overrides):
  """One prefill pass, or a prefill continued by another, gives the logits
  and the cache of feeding the same tokens one at a time; decoding then
  continues identically from either cache."""
  _, decode_model, variables = built(kind, **overrides)
  x = random_tokens(10)
  decode_vars = pnn.init_cache(decode_model, variables, BATCH, LEN)
  stepped, stepped_cache = pnn.decode_logits(decode_model, decode_vars,
                                                x[:, :12])
  scale = np.abs(stepped).max()
  close = functools.partial(np.testing.assert_allclose, atol=1e-5 * scale,
                            rtol=1e-5)
  whole, cache = pnn.prefill(decode_model, decode_vars, x[:, :12])
  assert whole.shape == (BATCH, 12, VOCAB) and whole.dtype == jnp.float32
  close(whole, stepped)
  first, cache_a = pnn.prefill(decode_model, decode_vars, x[:, :7])
  rest, cache_b = pnn.prefill(decode_model, {**decode_vars,
                                                "cache": cache_a}, x[:, 7:12])
  close(jnp.concatenate([first, rest], axis=1), stepped)
  for c in (cache, cache_b):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())), rtol=1e-5),
                 c, stepped_cache)
    after, _ = pnn.decode_logits(decode_model, {**decode_vars, "cache": c},
                                    x[:, 12:])
    reference, _ = pnn.decode_logits(
        decode_model, {**decode_vars, "cache": stepped_cache}, x[:, 12:])
    close(after, reference)


@pytest.mark.parametrize("kind", ["softmax", "favor_softmax"])
def test_cache_index_advances_and_state_size(kind):
  _, decode_model, variables = built(kind)
  decode_vars = pnn.init_cache(decode_model, variables, BATCH, LEN)
  assert int(decode_vars["cache"]["pos_embed"]["cache_index"]) == 0
  num = 5
  x = random_tokens(5, (BATCH, num))
  logits, cache = pnn.decode_logits(decode_model, decode_vars, x)
  # Continuing from the returned cache equals decoding in one go.
  more, _ = pnn.decode_logits(decode_model, {**decode_vars,
                                                "cache": cache}, x)
  both, _ = pnn.decode_logits(decode_model, decode_vars,
                                 jnp.concatenate([x, x], axis=1))
  np.testing.assert_allclose(jnp.concatenate([logits, more], axis=1), both,
                             atol=1e-5, rtol=1e-5)
  indices = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
             if "cache_index" in jax.tree_util.keystr(path)]
  assert len(indices) == 3  # position embedding and two attention layers
  assert all(int(i) == num for i in indices)
  # FAVOR's recurrent state does not grow with the decoded length; the KV
  # cache of exact attention does.
  short = jax.eval_shape(
      lambda: pnn.init_cache(decode_model, variables, BATCH, 4)["cache"])
  grows = [a.shape != b.shape for a, b in zip(jax.tree.leaves(short),
                                               jax.tree.leaves(cache))]
  assert any(grows) == (kind != "favor_softmax")


# Logit gap within which two tokens count as tied: the cached decode and the
# full forward pass sum in different orders, so a near-tie may break either
# way; anything wider is a real difference.
TIE_TOL = 1e-4


def assert_greedy(model, variables, tokens_BL, prompt_lengths):
  """Every token after row b's prompt is an argmax (up to TIE_TOL) of the full
  causal model's logits at the previous position: what greedy decoding means,
  checked by re-running the whole model on the decoded sequence."""
  # The last token is never an input: T may be the model's max_len + 1.
  logits = np.asarray(jax.jit(model.apply)(variables,
                                           jnp.asarray(tokens_BL[:, :-1])))
  tokens_BL = np.asarray(tokens_BL)
  for b, start in enumerate(prompt_lengths):
    for t in range(start - 1, tokens_BL.shape[1] - 1):
      chosen = logits[b, t, tokens_BL[b, t + 1]]
      assert chosen >= logits[b, t].max() - TIE_TOL, (b, t)


@pytest.mark.parametrize("kind", ["softmax", "favor_relu"])
def test_greedy_matches_brute_force_and_top1_sampling(kind):
  model, decode_model, variables = built(kind)
  prompt = random_tokens(1, (BATCH, 5))
  greedy = pnn.generate(decode_model, variables, prompt,
                           jax.random.PRNGKey(0), max_len=LEN + 1,
                           greedy=True)
  assert greedy.shape == (BATCH, LEN + 1) and greedy.dtype == jnp.int32
  np.testing.assert_array_equal(greedy[:, :5], prompt)
  assert_greedy(model, variables, greedy, [5] * BATCH)
  top1 = pnn.generate(decode_model, variables, prompt,
                         jax.random.PRNGKey(7), max_len=LEN + 1, top_k=1,
                         temperature=0.7)
  # Same decode path, same logits: top-1 sampling is the same argmax.
  np.testing.assert_array_equal(top1, greedy)


def test_prompt_lengths_batch_different_prompts():
  model, decode_model, variables = built("softmax")
  prompt = random_tokens(2, (BATCH, 6))
  lengths = jnp.array([6, 3], jnp.int32)
  mixed = pnn.generate(decode_model, variables, prompt,
                          jax.random.PRNGKey(0), max_len=LEN, greedy=True,
                          prompt_lengths_B=lengths)
  np.testing.assert_array_equal(mixed[0, :6], prompt[0])
  np.testing.assert_array_equal(mixed[1, :3], prompt[1, :3])
  # Row 1 continues from its own 3-token prompt, not from prompt[1, 3:6].
  assert_greedy(model, variables, mixed, [6, 3])


def test_sampling_stays_in_vocab_and_depends_on_rng():
  _, decode_model, variables = built("favor_softmax")
  prompt = random_tokens(3, (BATCH, 2))
  a = pnn.generate(decode_model, variables, prompt, jax.random.PRNGKey(0),
                      max_len=LEN, temperature=3.0)
  b = pnn.generate(decode_model, variables, prompt, jax.random.PRNGKey(1),
                      max_len=LEN, temperature=3.0)
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < VOCAB))
  np.testing.assert_array_equal(a[:, :2], prompt)
  assert np.any(np.asarray(a) != np.asarray(b))


def test_suppressed_tokens_are_never_generated():
  model, decode_model, variables = built("favor_softmax")
  prompt = random_tokens(5, (BATCH, 2))
  rng = jax.random.PRNGKey(3)
  free = pnn.generate(decode_model, variables, prompt, rng, max_len=LEN,
                         greedy=True)
  # Ban the tokens greedy decoding chose most (at most half the vocabulary):
  # the output must avoid them and be the argmax over the tokens left.
  ids, counts = np.unique(np.asarray(free[:, 2:]), return_counts=True)
  banned = tuple(int(t) for t in ids[np.argsort(-counts)][:VOCAB // 2])
  out = pnn.generate(decode_model, variables, prompt, rng, max_len=LEN,
                        greedy=True, suppress_tokens=banned)
  np.testing.assert_array_equal(out[:, :2], prompt)
  assert not np.isin(np.asarray(out[:, 2:]), banned).any()
  logits = np.array(jax.jit(model.apply)(variables, out[:, :-1]))
  logits[..., list(banned)] = -np.inf
  chosen = np.take_along_axis(logits[:, 1:], np.asarray(out[:, 2:, None]),
                              -1)[..., 0]
  assert (chosen >= logits[:, 1:].max(-1) - TIE_TOL).all()
  sampled = pnn.generate(decode_model, variables, prompt, rng,
                            max_len=LEN, temperature=5.0,
                            suppress_tokens=banned)
  assert not np.isin(np.asarray(sampled[:, 2:]), banned).any()
  with pytest.raises(ValueError, match="suppress_tokens"):
    pnn.generate(decode_model, variables, prompt, rng, max_len=LEN,
                    suppress_tokens=tuple(range(VOCAB)))
  with pytest.raises(ValueError, match="suppress_tokens"):
    pnn.generate(decode_model, variables, prompt, rng, max_len=LEN,
                    suppress_tokens=(VOCAB,))


def test_sample_logits_distribution():
  logits_V = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
  logits_NV = jnp.broadcast_to(logits_V, (20000, 4))
  rng = jax.random.PRNGKey(0)

  def freqs(**kw):
    draws = pnn.sample_logits(rng, logits_NV, **kw)
    return np.bincount(np.asarray(draws), minlength=4) / draws.shape[0]

  np.testing.assert_allclose(freqs(), [0.1, 0.2, 0.3, 0.4], atol=0.015)
  np.testing.assert_allclose(freqs(top_k=2), [0, 0, 3 / 7, 4 / 7],
                             atol=0.015)
  # Temperature 0.5 squares the probabilities before renormalizing.
  np.testing.assert_allclose(freqs(temperature=0.5),
                             np.array([1, 4, 9, 16]) / 30, atol=0.015)
  np.testing.assert_array_equal(
      pnn.sample_logits(rng, logits_NV[:3], greedy=True), [3, 3, 3])


def test_decoding_rejects_bad_use():
  model, decode_model, variables = built("softmax")
  with pytest.raises(ValueError, match="decode=True"):
    pnn.init_cache(model, variables, BATCH, LEN)
  with pytest.raises(ValueError, match="max_len"):
    pnn.init_cache(decode_model, variables, BATCH, LEN + 1)
  prompt = random_tokens(4, (BATCH, 3))
  with pytest.raises(ValueError, match="temperature"):
    pnn.generate(decode_model, variables, prompt, jax.random.PRNGKey(0),
                    max_len=LEN, temperature=0.0)
  with pytest.raises(ValueError, match=r"max_len \+ 1"):
    pnn.generate(decode_model, variables, prompt, jax.random.PRNGKey(0),
                    max_len=LEN + 2)
  with pytest.raises(ValueError, match="prompt length"):
    pnn.generate(decode_model, variables, random_tokens(4, (BATCH, 17)),
                    jax.random.PRNGKey(0), max_len=LEN)
  cached = pnn.init_cache(decode_model, variables, BATCH, LEN)
  with pytest.raises(ValueError, match="P >= 1"):
    pnn.prefill(decode_model, cached, jnp.zeros((BATCH, 0), jnp.int32))
