"""Pure attention functions: exact softmax, exact L2 and FAVOR+.

`api.py` holds the public functions, their argument checks and the dispatch
to the implementations (see its docstring for the map of this package).
"""

from performer_jax.attention.api import ATTENTION_KINDS
from performer_jax.attention.api import DEFAULT_CHUNK_SIZE
from performer_jax.attention.api import favor_attention
from performer_jax.attention.api import IMPLEMENTATIONS
from performer_jax.attention.api import l2_attention
from performer_jax.attention.api import slim_favor_attention
from performer_jax.attention.api import softmax_attention
from performer_jax.attention.feature_maps import KERNELS
from performer_jax.attention.random_features import (
    gaussian_orthogonal_random_matrix)
from performer_jax.attention.sequence import sequence_sharding
from performer_jax.attention.sequence import shard_sequence

__all__ = [
    "ATTENTION_KINDS",
    "DEFAULT_CHUNK_SIZE",
    "IMPLEMENTATIONS",
    "KERNELS",
    "favor_attention",
    "gaussian_orthogonal_random_matrix",
    "l2_attention",
    "sequence_sharding",
    "shard_sequence",
    "slim_favor_attention",
    "softmax_attention",
]
