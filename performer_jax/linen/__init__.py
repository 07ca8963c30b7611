"""Flax Linen modules: `from performer_jax import linen as pnn`.

  MultiHeadAttention        softmax, FAVOR+ or L2 attention (attention.py)
  Transformer, make_model   the encoder and decoder-only models
                            (transformer.py)
  init_cache, prefill,      decoding with a cache (decoding.py)
  decode_step, generate
  make_favor_attention_fn   FAVOR+ for `flax.linen.MultiHeadDotProductAttention`
                            (flax_compat.py)
"""

from performer_jax.core.sharding import LOGICAL_AXIS_RULES
from performer_jax.linen.attention import ATTENTION_KINDS
from performer_jax.linen.attention import MultiHeadAttention
from performer_jax.linen.attention import redraw_random_features
from performer_jax.linen.attention import RF_COLLECTION
from performer_jax.linen.decoding import decode_logits
from performer_jax.linen.decoding import decode_step
from performer_jax.linen.decoding import generate
from performer_jax.linen.decoding import init_cache
from performer_jax.linen.decoding import prefill
from performer_jax.linen.decoding import sample_logits
from performer_jax.linen.flax_compat import make_favor_attention_fn
from performer_jax.linen.transformer import make_model
from performer_jax.linen.transformer import Transformer
from performer_jax.schemas.sections import AttentionConfig
from performer_jax.schemas.sections import ModelConfig

__all__ = [
    "ATTENTION_KINDS", "AttentionConfig", "LOGICAL_AXIS_RULES",
    "ModelConfig", "MultiHeadAttention", "RF_COLLECTION", "Transformer",
    "decode_logits", "decode_step", "generate", "init_cache",
    "make_favor_attention_fn", "make_model", "prefill",
    "redraw_random_features", "sample_logits",
]
