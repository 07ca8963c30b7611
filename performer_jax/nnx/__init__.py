"""Flax NNX modules: `from performer_jax import nnx as pnnx`.

  MultiHeadAttention        softmax, FAVOR+ or L2 attention (attention.py)
  Transformer, make_model   the encoder and decoder-only models
                            (transformer.py)
  RandomFeatures            the Variable type of FAVOR+'s features
  redraw_random_features    new features, in place
  update_from_linen,        weights both ways between the Linen and the NNX
  to_linen_variables        modules (convert.py)

The math is the Linen modules' (performer_jax.core); see docs/nnx.md.
"""

from performer_jax.nnx.attention import MultiHeadAttention
from performer_jax.nnx.attention import RandomFeatures
from performer_jax.nnx.attention import redraw_random_features
from performer_jax.nnx.convert import COLLECTIONS
from performer_jax.nnx.convert import to_linen_variables
from performer_jax.nnx.convert import update_from_linen
from performer_jax.nnx.transformer import make_model
from performer_jax.nnx.transformer import Transformer

__all__ = [
    "COLLECTIONS",
    "MultiHeadAttention",
    "RandomFeatures",
    "Transformer",
    "make_model",
    "redraw_random_features",
    "to_linen_variables",
    "update_from_linen",
]
