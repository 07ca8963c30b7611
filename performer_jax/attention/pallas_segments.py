"""The Pallas FAVOR+ kernels in P stretches side by side, to fill a GPU.

pallas_favor.py walks each (batch, head) in one program: 32 programs at B4
H8, a quarter of an H200's 132 SMs. Here the length is cut into P
stretches of whole chunks that run as extra batch rows, tied together by
their key summaries (summary.py's operator, as sequence.py ties devices):
  causal: each stretch's summary (`pallas_favor.summarize`), their
    exclusive prefix from the seed, then one causal walk per stretch from
    its prefix;
  bidirectional: the stretches' summaries folded into one, then the
    queries of each stretch against it (`pallas_favor.attend`, whose
    backward walk then covers one stretch of queries).
Same values and gradients as one walk (the backward flows through the
summaries and seeds); each walk is P times shorter for one more parallel
pass over the keys. P comes from `segments_for`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from performer_jax.attention import chunked
from performer_jax.attention import pallas_favor
from performer_jax.attention import summary

# The shortest stretch, in chunks: each costs a key summary (and, causal, a
# seed) more.
MIN_SEGMENT_CHUNKS = 8


def sm_count() -> int:
  """The first GPU's streaming multiprocessors (132 on an H200); 0 when
  there is none or it does not say."""
  try:
    return int(jax.devices("gpu")[0].core_count)
  except (RuntimeError, AttributeError, TypeError, ValueError):
    return 0


def segments_for(groups: int, num_chunks: int, on: str | None = None) -> int:
  """P: on a GPU, enough stretches that `groups` (B*H) times P programs
  fill its SMs, each at least MIN_SEGMENT_CHUNKS chunks long; 1 elsewhere
  (a TPU core walks its grid in order anyway)."""
  if (on or pallas_favor.platform()) != "gpu":
    return 1
  return max(1, min(-(-sm_count() // groups),
                    num_chunks // MIN_SEGMENT_CHUNKS))


def _tile(chunk_size, kernel, projection, head_dim, on):
  return pallas_favor.tile_rows(
      chunk_size, chunked.feature_dim(kernel, projection, head_dim), on)


class _Split:
  """`[B, H, L, X]` <-> `[B*P, H, per, X]`: at most `p` stretches of `per`
  tokens (whole chunks of c, as even as they come), the last zero-padded;
  `self.p` is how many (never an empty one)."""

  def __init__(self, b: int, length: int, c: int, p: int):
    n = chunked.num_chunks(length, c)[1]
    per_chunks = -(-n // p)
    self.b, self.length, self.p = b, length, -(-n // per_chunks)
    self.per = per_chunks * c
    self.pad = self.p * self.per - length

  def __call__(self, x_BHLX):
    b, p, per = self.b, self.p, self.per
    x = chunked.pad_axis(x_BHLX, 2, self.pad)
    x = x.reshape((b, x.shape[1], p, per) + x.shape[3:])
    return jnp.moveaxis(x, 2, 1).reshape((b * p, x.shape[1], per) +
                                         x.shape[4:])

  def mask(self, key_mask_BL):
    """`[B, L]` -> `[B*P, per]`, False at the padding (None: no mask and no
    padding). Padded keys must not count: bidirectional, every query sees
    the last stretch."""
    if key_mask_BL is None and not self.pad:
      return None
    if key_mask_BL is None:
      key_mask_BL = jnp.ones((self.b, self.length), bool)
    return chunked.pad_axis(key_mask_BL, 1, self.pad).reshape(
        self.b * self.p, self.per)

  def undo(self, x_XHTX):
    """`[B*P, H, per, X]` -> `[B, H, L, X]`."""
    b, p, per = self.b, self.p, self.per
    x = jnp.moveaxis(x_XHTX.reshape((b, p) + x_XHTX.shape[1:]), 1, 2)
    return x.reshape((b, x.shape[1], p * per) +
                     x.shape[4:])[:, :, :self.length]


def _stretch_summaries(split, x_k_BHLD, v_BHLE, key_mask_BL, projection,
                       kw):
  """`(m [B, P, H] or None, S [B, P, H, F, Dv+1])` of each stretch."""
  m_X, s_XHFE = pallas_favor.summarize(split(x_k_BHLD), split(v_BHLE),
                                       split.mask(key_mask_BL), projection,
                                       **kw)
  b, p = split.b, split.p
  m_BPH = None if m_X is None else m_X.reshape((b, p) + m_X.shape[1:])
  return m_BPH, s_XHFE.reshape((b, p) + s_XHFE.shape[1:])


@functools.partial(jax.named_call, name="favor_causal_pallas_segments")
def causal(x_q_BHLD, x_k_BHLD, v_BHLE, key_mask_BL, projection, *,
           kernel: str, chunk_size: int, seed: tuple | None = None,
           dtype=jnp.float32, on: str | None = None,
           segments: int = 1) -> jax.Array:
  """`pallas_favor.causal` (same arguments) in `segments` stretches, with
  tiles of `pallas_favor.tile_rows(chunk_size)`."""
  b, h, length, d = x_q_BHLD.shape
  c = chunked.num_chunks(length, _tile(chunk_size, kernel, projection, d,
                                       on))[0]
  kw = {"kernel": kernel, "chunk_size": c, "dtype": dtype, "on": on}
  split = _Split(b, length, c, segments)
  if split.p <= 1:
    return pallas_favor.causal(x_q_BHLD, x_k_BHLD, v_BHLE, key_mask_BL,
                               projection, seed=seed, **kw)
  m_BPH, s_BPHFE = _stretch_summaries(split, x_k_BHLD, v_BHLE, key_mask_BL,
                                      projection, kw)
  if seed is None:
    seed = (None if m_BPH is None else jnp.full((b, h), -jnp.inf),
            jnp.zeros((b, h) + s_BPHFE.shape[-2:], jnp.float32))
  m_in_BPH, p_BPHFE = summary.exclusive_prefix(m_BPH, s_BPHFE, seed, axis=1)
  flat = lambda x: None if x is None else x.reshape((-1,) + x.shape[2:])
  out = pallas_favor.causal(
      split(x_q_BHLD), split(x_k_BHLD), split(v_BHLE),
      split.mask(key_mask_BL), projection,
      seed=(flat(m_in_BPH), flat(p_BPHFE)), **kw)
  return split.undo(out)


@functools.partial(jax.named_call, name="favor_bidirectional_pallas_segments")
def bidirectional(x_q_BHLD, x_k_BHSD, v_BHSE, key_mask_BS, projection, *,
                  kernel: str, chunk_size: int, dtype=jnp.float32,
                  on: str | None = None, segments: int = 1) -> jax.Array:
  """`pallas_favor.bidirectional` (same arguments) in `segments` stretches
  of keys and of queries, with tiles of `pallas_favor.tile_rows`."""
  b, h, length, d = x_q_BHLD.shape
  s_len = x_k_BHSD.shape[2]
  tile = _tile(chunk_size, kernel, projection, d, on)
  c = min(chunked.num_chunks(length, tile)[0],
          chunked.num_chunks(s_len, tile)[0])
  kw = {"kernel": kernel, "chunk_size": c, "dtype": dtype, "on": on}
  keys = _Split(b, s_len, c, segments)
  queries = _Split(b, length, c, segments)
  if max(keys.p, queries.p) <= 1:
    return pallas_favor.bidirectional(x_q_BHLD, x_k_BHSD, v_BHSE,
                                      key_mask_BS, projection, **kw)
  m_BPH, s_BPHFE = _stretch_summaries(keys, x_k_BHSD, v_BHSE, key_mask_BS,
                                      projection, kw)
  _, sums_BHFE = summary.fold(
      None if m_BPH is None else jnp.moveaxis(m_BPH, 1, 0),
      jnp.moveaxis(s_BPHFE, 1, 0), jnp.ones((keys.p,), bool))
  # Row b*P + i of the queries' stretches belongs to batch row b.
  sums_XHFE = jnp.repeat(sums_BHFE, queries.p, axis=0)
  out = pallas_favor.attend(queries(x_q_BHLD), sums_XHFE, projection, **kw)
  return queries.undo(out)
