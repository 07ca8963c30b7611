"""Flax linen modules built on the pure attention functions."""

from performer_jax.nn.attention import ATTENTION_KINDS
from performer_jax.nn.attention import MultiHeadAttention
from performer_jax.nn.attention import RF_COLLECTION
from performer_jax.nn.attention import redraw_random_features
from performer_jax.nn.flax_compat import make_favor_attention_fn

__all__ = [
    "ATTENTION_KINDS",
    "MultiHeadAttention",
    "RF_COLLECTION",
    "make_favor_attention_fn",
    "redraw_random_features",
]
