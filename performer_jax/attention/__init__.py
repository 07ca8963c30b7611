"""Pure attention functions: exact softmax, exact L2 and FAVOR+."""

from performer_jax.attention.exact import l2_attention
from performer_jax.attention.exact import softmax_attention
from performer_jax.attention.favor import favor_attention
from performer_jax.attention.feature_maps import KERNELS
from performer_jax.attention.random_features import (
    gaussian_orthogonal_random_matrix)
from performer_jax.attention.slim import slim_favor_attention

__all__ = [
    "KERNELS",
    "favor_attention",
    "gaussian_orthogonal_random_matrix",
    "l2_attention",
    "slim_favor_attention",
    "softmax_attention",
]
