"""Lipschitz toolkit for L2 self-attention (Kim, Papamakarios, Mnih 2021).

  lambertw:    principal Lambert W (phi^-1(N-1) = W_0((N-1)/e))
  maps:        L2 and dot-product attention as pure functions of the weights
  bounds:      Theorem 3.2 upper bounds (inf- and 2-norm)
  jacobian:    empirical lower bounds, max_X ||J_f(X)||, by Adam ascent
  contractive: contractive L2 attention and MLP blocks
  invertible:  fixed-point inverse of y = x + g(x)
  model:       an invertible L2 Transformer LM
"""

from performer_jax.lipschitz.bounds import l2_mha_bound
from performer_jax.lipschitz.bounds import l2_mha_bound_from_variables
from performer_jax.lipschitz.contractive import ContractiveL2Attention
from performer_jax.lipschitz.contractive import ContractiveMlp
from performer_jax.lipschitz.invertible import fixed_point_inverse
from performer_jax.lipschitz.invertible import InverseInfo
from performer_jax.lipschitz.invertible import InvertibleResidual
from performer_jax.lipschitz.jacobian import jacobian_norm
from performer_jax.lipschitz.jacobian import LowerBoundResult
from performer_jax.lipschitz.jacobian import search_lower_bound
from performer_jax.lipschitz.lambertw import lambertw0
from performer_jax.lipschitz.model import invert_hidden
from performer_jax.lipschitz.model import InvertibleL2Transformer
from performer_jax.lipschitz.model import make_invertible_model

__all__ = [
    "ContractiveL2Attention",
    "ContractiveMlp",
    "InverseInfo",
    "InvertibleL2Transformer",
    "InvertibleResidual",
    "LowerBoundResult",
    "fixed_point_inverse",
    "invert_hidden",
    "jacobian_norm",
    "l2_mha_bound",
    "l2_mha_bound_from_variables",
    "lambertw0",
    "make_invertible_model",
    "search_lower_bound",
]
