"""FAVOR+ random projections: Haar-orthogonal blocks with chi or sqrt(d) norms.

Orthogonal random features (Choromanski et al. 2021, Sec. 2.4) stack
`ceil(m / d)` independent `d x d` blocks, which must be Haar-distributed: a
plain QR of a Gaussian matrix is not (a biased estimator); Gram-Schmidt is
(the `sign(diag R)`-corrected QR). Not `jnp.linalg.qr` or
`jax.random.orthogonal`: on a 2-core CPU, jaxlib 0.10's batched LAPACK
kernels can deadlock when XLA runs two at once (one projection per layer, at
init and every redraw in the jitted step). Gram-Schmidt is matmul-only,
O(d^3) per block, on any backend.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCALINGS = ("chi", "sqrt_d")
_HIGHEST = jax.lax.Precision.HIGHEST


def _gram_schmidt(a_NDD: jax.Array) -> jax.Array:
  """Rows of `a` orthonormalized in order (classical Gram-Schmidt, applied
  twice per row, which is as accurate as Householder for full-rank input).

  Row i is `a_i` minus its projection on rows `< i`, normalized: the
  Q^T of `a^T = Q R` with `diag(R) > 0`.
  """
  n, d, _ = a_NDD.shape

  def body(i, q_NDD):
    v_ND = a_NDD[:, i]
    for _ in range(2):  # Reorthogonalize: one pass loses orthogonality.
      v_ND = v_ND - jnp.einsum("nkd,nk->nd", q_NDD,
                               jnp.einsum("nkd,nd->nk", q_NDD, v_ND,
                                          precision=_HIGHEST),
                               precision=_HIGHEST)
    v_ND = v_ND / jnp.linalg.norm(v_ND, axis=-1, keepdims=True)
    return q_NDD.at[:, i].set(v_ND)

  return jax.lax.fori_loop(0, d, body, jnp.zeros((n, d, d), a_NDD.dtype))


def haar_orthogonal(rng: jax.Array, num: int, dim: int) -> jax.Array:
  """`[num, dim, dim]` independent Haar-random orthogonal matrices (float32)."""
  gaussian = jax.random.normal(rng, (num, dim, dim), jnp.float32)
  return _gram_schmidt(gaussian)


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
    blocks_NDD = haar_orthogonal(block_rng, num_blocks, dim)
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
