"""Mean-pooled sentence embeddings of an encoder, batched for speed.

The same pooling as `performer-score --embeddings` (the mean of the final
hidden states, `ln_final`'s output, over a sentence's tokens, special tokens
included), for one window per sentence: sentences are cut to `max_len`
tokens, as sentence-transformers truncates to its max_seq_length.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from performer_jax.tasks import base

PAD_MULTIPLE = 16


def _is_final_norm(module, method_name: str) -> bool:
  return module.name == "ln_final" and method_name == "__call__"


def hidden_states(model: nn.Module, variables: Any, tokens_BL: jax.Array,
                  mask_BL: jax.Array) -> jax.Array:
  """float32 `[B, L, D]` final hidden states (padded positions masked)."""
  _, state = model.apply(variables, tokens_BL, key_mask_BL=mask_BL,
                         capture_intermediates=_is_final_norm,
                         mutable=["intermediates"])
  return state["intermediates"]["ln_final"]["__call__"][0].astype(
      jnp.float32)


def mean_pool(hidden_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
  """float32 `[B, D]`: the mean over the positions where `mask_BL`."""
  weights_BL1 = mask_BL[..., None].astype(jnp.float32)
  return (jnp.sum(hidden_BLD * weights_BL1, 1)
          / jnp.maximum(jnp.sum(weights_BL1, 1), 1.0))


@functools.partial(jax.jit, static_argnames=("model",))
def pooled(model: nn.Module, variables: Any, tokens_BL: jax.Array,
           mask_BL: jax.Array) -> jax.Array:
  return mean_pool(hidden_states(model, variables, tokens_BL, mask_BL),
                   mask_BL)


def pad_batch(rows: Sequence[np.ndarray], batch: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """(int32 tokens, bool mask) `[batch, L]`, L the longest row rounded up to
  PAD_MULTIPLE (few distinct shapes, few compilations)."""
  length = -(-max(len(r) for r in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
  tokens = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), bool)
  for b, row in enumerate(rows):
    tokens[b, :len(row)], mask[b, :len(row)] = row, True
  mask[len(rows):, 0] = True  # unused rows: no row without a key
  return tokens, mask


def encode(io_: base.TaskIO, texts: Sequence[str], max_len: int
           ) -> list[np.ndarray]:
  """Token ids of each text, cut to `max_len` (keeping the last token, the
  end marker of BERT inputs)."""
  out = []
  for text in texts:
    ids = np.asarray(io_.encode(text), np.int32)
    if len(ids) > max_len:
      ids = np.concatenate([ids[:max_len - 1], ids[-1:]])
    out.append(ids)
  return out


def sentence_embeddings(model: nn.Module, variables: Any, io_: base.TaskIO,
                        texts: Sequence[str], *, max_len: int,
                        batch: int = 64) -> np.ndarray:
  """float32 `[len(texts), D]` mean-pooled embeddings; rows sorted by
  length inside the call so that batches pad little."""
  rows = encode(io_, texts, max_len)
  order = np.argsort([len(r) for r in rows], kind="stable")
  out = None
  for start in range(0, len(rows), batch):
    index = order[start:start + batch]
    tokens, mask = pad_batch([rows[i] for i in index], batch)
    emb = np.asarray(pooled(model, variables, tokens, mask))[:len(index)]
    if out is None:
      out = np.zeros((len(rows), emb.shape[1]), np.float32)
    out[index] = emb
  return out
