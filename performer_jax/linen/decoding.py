"""Autoregressive decoding for the decoder-only `Transformer`.

A `make_model(..., causal=True, decode=True)` model shares the training
model's parameters and random features; its "cache" collection holds the
attention cache (attention/incremental.py) and the position index.

  variables = init_cache(decode_model, train_variables, batch_size, max_len)
  logits_BPV, cache = prefill(decode_model, variables, prompt_BP)
  tokens_BT = generate(decode_model, train_variables, prompt_BP, rng,
                       max_len=..., temperature=..., top_k=...)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from performer_jax.linen.transformer import Transformer

Variables = dict[str, Any]


def _check_decode_model(model: Transformer) -> None:
  if not isinstance(model, Transformer) or not model.decode:
    raise ValueError("decoding needs a model built with make_model(..., "
                     "causal=True, decode=True)")


def init_cache(model: Transformer, variables: Variables, batch_size: int,
               max_len: int) -> Variables:
  """Returns `variables` with a fresh "cache" for `batch_size` sequences of up
  to `max_len` tokens (any previous cache is replaced).

  Args:
    model: a decode-mode model (`decode=True`).
    variables: the trained variables ("params", and "random_features" for
      FAVOR); the same tree as the `decode=False` model's.
    batch_size: number of sequences decoded in parallel.
    max_len: total length (prompt + generated), <= the model's max_len.
  """
  _check_decode_model(model)
  if not 1 <= max_len <= model.config.max_len:
    raise ValueError(f"max_len must be in [1, {model.config.max_len}] (the "
                     f"model's max_len), got {max_len}")
  if "params" not in variables:
    raise ValueError(f"variables need a 'params' collection, got "
                     f"{sorted(variables)}")
  cache = _fresh_cache(model, batch_size, max_len)
  return {**{k: v for k, v in variables.items() if k != "cache"},
          "cache": cache}


@functools.partial(jax.jit, static_argnames=("model", "batch_size",
                                             "max_len"))
def _fresh_cache(model: Transformer, batch_size: int, max_len: int) -> Any:
  # `init` on a full-length input sizes every cache. Its fresh parameters are
  # not returned, so XLA never computes them.
  tokens_BT = jnp.zeros((batch_size, max_len), jnp.int32)
  rng = jax.random.PRNGKey(0)
  return model.init({"params": rng, "random_features": rng},
                    tokens_BT)["cache"]


def decode_step(model: Transformer, variables: Variables,
                tokens_B1: jax.Array) -> tuple[jax.Array, Any]:
  """Feeds one token per sequence; returns (float32 [B, V] logits for the
  next token, the updated cache)."""
  logits_B1V, mutated = model.apply(variables, tokens_B1, mutable=["cache"])
  return logits_B1V[:, 0], mutated["cache"]


@functools.partial(jax.jit, static_argnames=("model",))
def prefill(model: Transformer, variables: Variables,
            tokens_BP: jax.Array) -> tuple[jax.Array, Any]:
  """Feeds P tokens per sequence in one pass and advances the cache by P.

  FAVOR+ runs one chunked causal pass that starts from the cached state and
  returns the state after the last token; softmax and L2 write all P keys and
  values into the cache and attend causally. The result equals P calls of
  `decode_step` up to float32 rounding, at the cost of one forward pass.

  Args:
    model: a decode-mode model (`decode=True`).
    variables: trained variables with a cache (from `init_cache`, or from an
      earlier call: prefill continues where the cache stopped).
    tokens_BP: int [B, P]; the cache must have room for P more tokens.

  Returns:
    (float32 [B, P, V] logits, the updated cache).
  """
  _check_decode_model(model)
  if tokens_BP.ndim != 2 or tokens_BP.shape[1] == 0:
    raise ValueError(f"tokens must be [B, P] with P >= 1, got shape "
                     f"{tokens_BP.shape}")
  logits_BPV, mutated = model.apply(variables, tokens_BP, mutable=["cache"])
  return logits_BPV, mutated["cache"]


@functools.partial(jax.jit, static_argnames=("model",))
def decode_logits(model: Transformer, variables: Variables,
                  tokens_BL: jax.Array) -> tuple[jax.Array, Any]:
  """Teacher-forced decoding: feeds `tokens_BL` one position at a time.

  `variables` must hold a cache (from `init_cache` with max_len >= L, or
  from an earlier call, to continue where it stopped).

  Returns:
    (float32 [B, L, V] logits, equal up to rounding to the full forward pass
    of the `decode=False` model on the same tokens; the updated cache).
  """
  _check_decode_model(model)
  if tokens_BL.ndim != 2 or tokens_BL.shape[1] > model.config.max_len:
    raise ValueError(f"tokens must be [B, L] with L <= max_len="
                     f"{model.config.max_len}, got shape {tokens_BL.shape}")

  def step(cache, tokens_B):
    logits_BV, cache = decode_step(model, {**variables, "cache": cache},
                                   tokens_B[:, None])
    return cache, logits_BV

  cache, logits_LBV = jax.lax.scan(step, variables["cache"], tokens_BL.T)
  return jnp.transpose(logits_LBV, (1, 0, 2)), cache


def sample_logits(rng: jax.Array, logits_BV: jax.Array, *,
                  temperature: float | jax.Array = 1.0, top_k: int = 0,
                  greedy: bool = False) -> jax.Array:
  """Draws int32 [B] token ids from float [B, V] logits.

  greedy takes the argmax; otherwise samples softmax(logits / temperature),
  restricted to the `top_k` largest logits when top_k > 0.
  """
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def generate(model: Transformer, variables: Variables, prompt_BP: jax.Array,
             rng: jax.Array, *, max_len: int,
             temperature: float | jax.Array = 1.0, top_k: int = 0,
             greedy: bool = False,
             prompt_lengths_B: jax.Array | None = None,
             suppress_tokens: tuple[int, ...] = ()) -> jax.Array:
  """Extends prompts to `max_len` tokens by sampling (or greedy decoding).

  The prompt is prefilled in one pass (`prefill`); with prompts of different
  lengths, the length they all share is prefilled and each longer prompt's
  remaining tokens are fed through the same one-token steps as generation,
  given rather than sampled. The work is jitted; it compiles once per
  (model, shapes, max_len, top_k, greedy, shared prompt length).

  Args:
    model: a decode-mode model (`decode=True`).
    variables: trained variables ("params", "random_features"); a cache is
      created here.
    prompt_BP: int [B, P] prompt tokens, 1 <= P <= max_len.
    rng: PRNG key for sampling; token t is drawn with `fold_in(rng, t - 1)`.
    max_len: total output length T, at most the model's max_len + 1 (the
      last token is sampled from the logits at position T - 2 and never
      fed, so the cache holds T - 1 tokens).
    temperature: softmax temperature (> 0) for sampling.
    top_k: if > 0, sample only among the k most likely tokens.
    greedy: take the argmax instead of sampling.
    prompt_lengths_B: optional int [B] in [1, P]: sequence b's prompt is
      prompt_BP[b, :prompt_lengths_B[b]]. Defaults to P for every sequence.
    suppress_tokens: ids never generated (e.g. padding and start tokens).

  Returns:
    int32 [B, T]: the prompts followed by generated tokens.
  """
  _check_decode_model(model)
  if prompt_BP.ndim != 2:
    raise ValueError(f"prompt must have shape [B, P], got {prompt_BP.shape}")
  batch, prompt_len = prompt_BP.shape
  if not 1 <= prompt_len <= max_len:
    raise ValueError(f"prompt length {prompt_len} must be in [1, max_len="
                     f"{max_len}]")
  if max_len > model.config.max_len + 1:
    raise ValueError(f"max_len={max_len} exceeds the model's max_len + 1 = "
                     f"{model.config.max_len + 1} (the last token is sampled, "
                     "never fed)")
  if not 0 <= top_k <= model.vocab_size:
    raise ValueError(f"top_k must be in [0, vocab_size="
                     f"{model.vocab_size}], got {top_k}")
  if not greedy and isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}; use "
                     "greedy=True for argmax decoding")
  if prompt_lengths_B is None:
    prompt_lengths_B = jnp.full((batch,), prompt_len, jnp.int32)
  elif prompt_lengths_B.shape != (batch,):
    raise ValueError(f"prompt_lengths must have shape [{batch}], got "
                     f"{prompt_lengths_B.shape}")
  try:
    shared = int(jnp.min(prompt_lengths_B))
  except jax.errors.ConcretizationTypeError:
    shared = 1  # traced lengths: only the first token is surely given
  if not 1 <= shared <= prompt_len:
    raise ValueError(f"prompt_lengths must be in [1, {prompt_len}], got a "
                     f"minimum of {shared}")
  suppress_tokens = tuple(sorted({int(t) for t in suppress_tokens}))
  if any(not 0 <= t < model.vocab_size for t in suppress_tokens) or (
      len(suppress_tokens) >= model.vocab_size):
    raise ValueError(f"suppress_tokens must be ids in [0, "
                     f"{model.vocab_size}) and leave one, got "
                     f"{suppress_tokens}")
  return _generate(model, variables, prompt_BP.astype(jnp.int32), rng,
                   jnp.asarray(temperature, jnp.float32),
                   prompt_lengths_B.astype(jnp.int32), max_len=max_len,
                   top_k=top_k, greedy=greedy, shared=shared,
                   suppress=suppress_tokens)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "top_k",
                                             "greedy", "shared", "suppress"))
def _generate(model, variables, prompt_BP, rng, temperature, prompt_lengths_B,
              *, max_len, top_k, greedy, shared, suppress):
  batch, prompt_len = prompt_BP.shape
  tokens_BT = jnp.zeros((batch, max_len), jnp.int32)
  tokens_BT = tokens_BT.at[:, :prompt_len].set(prompt_BP)
  if shared == max_len:
    return tokens_BT
  variables = init_cache(model, variables, batch, max_len - 1)

  def choose(t, logits_BV, tokens_BT):
    """Token t + 1: sampled, or given inside a sequence's prompt."""
    if suppress:
      logits_BV = logits_BV.at[:, jnp.asarray(suppress)].set(-jnp.inf)
    sampled_B = sample_logits(jax.random.fold_in(rng, t), logits_BV,
                              temperature=temperature, top_k=top_k,
                              greedy=greedy)
    given_B = jax.lax.dynamic_slice_in_dim(tokens_BT, t + 1, 1, axis=1)[:, 0]
    next_B = jnp.where(t + 1 < prompt_lengths_B, given_B, sampled_B)
    return jax.lax.dynamic_update_slice_in_dim(tokens_BT, next_B[:, None],
                                               t + 1, axis=1)

  logits_BSV, cache = prefill(model, variables, tokens_BT[:, :shared])
  tokens_BT = choose(shared - 1, logits_BSV[:, -1], tokens_BT)

  def step(carry, t):
    cache, tokens_BT = carry
    tokens_B1 = jax.lax.dynamic_slice_in_dim(tokens_BT, t, 1, axis=1)
    logits_BV, cache = decode_step(model, {**variables, "cache": cache},
                                   tokens_B1)
    return (cache, choose(t, logits_BV, tokens_BT)), None

  (_, tokens_BT), _ = jax.lax.scan(step, (cache, tokens_BT),
                                   jnp.arange(shared, max_len - 1))
  return tokens_BT
