"""Random projections for FAVOR+: Haar-orthogonal blocks with chi or sqrt(d) norms.

Orthogonal random features (Choromanski et al. 2021, Sec. 2.4) stack
`ceil(m / d)` independent `d x d` orthogonal blocks. Each block must be
*Haar*-distributed: a plain QR of a Gaussian matrix is not (its Q has a sign
pattern tied to R), and the resulting estimator is biased along some
directions. `jax.random.orthogonal` applies the `sign(diag R)` correction, so
its output is Haar.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCALINGS = ("chi", "sqrt_d")


def gaussian_orthogonal_random_matrix(rng: jax.Array, num_features: int,
                                      dim: int, *, scaling: str = "chi",
                                      orthogonal: bool = True,
                                      dtype=jnp.float32) -> jax.Array:
  """Draws a `[num_features, dim]` projection whose rows are random features.

  Args:
    rng: PRNG key.
    num_features: m, the number of rows (features). Need not divide by `dim`.
    dim: d, the head dimension.
    scaling: "chi": row norms are chi(d)-distributed, i.e. each row has the
      norm of a fresh N(0, I_d) vector, so marginally every row is N(0, I_d)
      (the paper default). "sqrt_d": every row has norm exactly sqrt(d)
      (the paper's "SMREG" regularized variant).
    orthogonal: True stacks Haar-random orthogonal blocks (rows within a block
      are exactly orthogonal); False draws iid Gaussian rows.
    dtype: float dtype of the result (float32 by default; keep it float32).

  Returns:
    `[num_features, dim]` array.
  """
  if scaling not in SCALINGS:
    raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}.")
  if int(num_features) <= 0 or int(dim) <= 0:
    raise ValueError("num_features and dim must be positive, got "
                     f"num_features={num_features}, dim={dim}.")
  block_rng, norm_rng = jax.random.split(rng)
  if orthogonal:
    num_blocks = math.ceil(num_features / dim)
    blocks_NDD = jax.random.orthogonal(block_rng, dim, shape=(num_blocks,),
                                       dtype=jnp.float32)
    directions_MD = blocks_NDD.reshape(num_blocks * dim, dim)[:num_features]
  else:
    gaussian_MD = jax.random.normal(block_rng, (num_features, dim),
                                    jnp.float32)
    if scaling == "chi":
      return gaussian_MD.astype(dtype)
    directions_MD = gaussian_MD / jnp.linalg.norm(gaussian_MD, axis=-1,
                                                  keepdims=True)
  if scaling == "chi":
    norms_M = jnp.linalg.norm(
        jax.random.normal(norm_rng, (num_features, dim), jnp.float32), axis=-1)
  else:
    norms_M = jnp.full((num_features,), math.sqrt(dim), jnp.float32)
  return (directions_MD * norms_M[:, None]).astype(dtype)
