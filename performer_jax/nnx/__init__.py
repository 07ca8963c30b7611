"""Flax NNX modules: `from performer_jax import nnx as pnnx`.

Attention (attention.py), the models (transformer.py) and weights both ways
between the Linen and NNX modules (convert.py). The math is the Linen
modules' (performer_jax.core); see docs/nnx.md.
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
