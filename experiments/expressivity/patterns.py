"""Sparse target matrices, the ratio precision, the JL construction and a fit.

Likhosherstov, Choromanski and Weller (2021), "On the Expressive Power of
Self-Attention Matrices". A is `[L, L]`, non-negative, with k non-zeros in
every row and every column. The paper measures precision by preserved
ratios of matrix elements; its exact definition was not available to us,
and this project reads it as follows. A row-stochastic M approximates A at
precision eps when in every row i

  pattern ratios:   for non-zeros j, j':
                    |log(M_ij / M_ij') - log(A_ij / A_ij')| <= log(1 + eps)
  off-pattern:      for A_ij = 0 and A_ij' > 0:  M_ij / M_ij' <= eps

(ratios only, so row scaling is free).

Construction (the paper's proof, made an algorithm): B = C + log A on the
pattern and 0 elsewhere, so exp(B) is a row-rescaled A whose off-pattern
entries are exp(-C) times smaller; B is k-sparse, hence B = I B with rows
of I and columns of B of bounded norm, and a Gaussian R `[L, d] / sqrt(d)`
(Johnson-Lindenstrauss) gives X1 = R, X2 = B^T R with X1 X2^T ~ B up to an
additive error O(C sqrt(k log L / d)) (the columns of B have norm about
C sqrt(k)). The inputs are X = [X1, X2] `[L, 2d]` and the fixed parameters
W_Q = d^(1/4) [I; 0], W_K = d^(1/4) [0; I] `[2d, d]`, so that
softmax(X W_Q (X W_K)^T / sqrt(d)) = softmax(X1 X2^T): d is the query/key
width (the paper's "query dimension"), the input width is 2d.

The fit keeps the same fixed parameters and learns the inputs (queries and
keys, each row of norm <= rho) by Adam on a hinge loss on the two
conditions above.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from performer_jax.attention import favor_attention
from performer_jax.attention import gaussian_orthogonal_random_matrix
from performer_jax.attention import softmax_attention

VALUE_RANGE = (1.0, 2.0)  # Non-zeros of A are uniform in this range.


def sparse_pattern(length: int, k: int, seed: int) -> np.ndarray:
  """`[L, L]` float32 with exactly k non-zeros in each row and column.

  The support is the union of k random permutations with distinct entries
  in every row (redrawn until they are).
  """
  if not 1 <= k <= length:
    raise ValueError(f"need 1 <= k <= L, got k={k}, L={length}.")
  rng = np.random.default_rng(seed)
  cols_LK = np.stack([rng.permutation(length)], 1)
  while cols_LK.shape[1] < k:
    perm = rng.permutation(length)
    if not (cols_LK == perm[:, None]).any():
      cols_LK = np.concatenate([cols_LK, perm[:, None]], 1)
  a = np.zeros((length, length), np.float32)
  a[np.arange(length)[:, None], cols_LK] = rng.uniform(*VALUE_RANGE,
                                                       (length, k))
  return a


def gap(eps: float) -> float:
  """C: the pattern's logits sit log(1/eps) + log(max/min A) + 1/2 above 0.

  The 1/2 is the margin the random error may use on the off-pattern side.
  """
  return float(np.log(1 / eps) + np.log(VALUE_RANGE[1] / VALUE_RANGE[0])
               + 0.5)


def violations(logits_LL: np.ndarray, a_LL: np.ndarray,
               eps: float) -> tuple[float, float]:
  """(worst pattern log-ratio error, worst log off/on ratio) over all rows.

  Precision eps holds iff the first is <= log(1 + eps) and the second is
  <= log(eps). Logits are the softmax's inputs (or log M: rows may shift).
  """
  logits_LL = np.asarray(logits_LL, np.float64)
  on = a_LL > 0
  r = logits_LL - np.log(np.where(on, a_LL, 1.0))
  spread = (np.where(on, r, -np.inf).max(1) - np.where(on, r, np.inf).min(1))
  off = (np.where(on, -np.inf, logits_LL).max(1) -
         np.where(on, logits_LL, np.inf).min(1))
  return float(spread.max()), float(off.max())


def within(logits_LL, a_LL, eps: float) -> bool:
  spread, off = violations(logits_LL, a_LL, eps)
  return spread <= np.log1p(eps) and off <= np.log(eps)


def construction(a_LL: np.ndarray, d: int, eps: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The paper's (X1 `[L, d]`, X2 `[L, d]`): softmax(X1 X2^T) ~ A."""
  length = a_LL.shape[0]
  on = a_LL > 0
  r_LD = np.random.default_rng(seed).standard_normal(
      (length, d)).astype(np.float32) / np.sqrt(d)
  # X2 = B^T R through B's k non-zeros per column (L k d, not L^2 d).
  rows_LK = np.argsort(~on, axis=0, kind="stable")[:int(on[:, 0].sum())].T
  b_LK = (gap(eps) + np.log(a_LL[rows_LK, np.arange(length)[:, None]])
          ).astype(np.float32)
  x2_LD = np.einsum("jk,jkd->jd", b_LK, r_LD[rows_LK])
  # Balance the two halves (same product, smaller norms for FAVOR+).
  scale = np.sqrt(np.linalg.norm(x2_LD, axis=1).mean() /
                  np.linalg.norm(r_LD, axis=1).mean())
  return r_LD * scale, x2_LD / scale


def inputs_and_weights(x1_LD, x2_LD):
  """X `[L, 2d]`, W_Q, W_K `[2d, d]`: the fixed self-attention parameters."""
  d = x1_LD.shape[1]
  x = np.concatenate([x1_LD, x2_LD], 1)
  eye, zero = np.eye(d, dtype=np.float32), np.zeros((d, d), np.float32)
  w_q = d ** 0.25 * np.concatenate([eye, zero], 0)
  w_k = d ** 0.25 * np.concatenate([zero, eye], 0)
  return x, w_q, w_k


def attention_matrix(x_LE, w_q, w_k, projection=None) -> np.ndarray:
  """M `[L, L]` = self-attention of X applied to the identity values.

  Exact softmax attention, or FAVOR+ with `projection` `[m, d]`.
  """
  q = jnp.asarray(x_LE @ w_q)[:, None, :]
  k = jnp.asarray(x_LE @ w_k)[:, None, :]
  v = jnp.eye(x_LE.shape[0], dtype=jnp.float32)[:, None, :]
  if projection is None:
    return np.asarray(softmax_attention(q, k, v))[:, 0]
  return np.asarray(favor_attention(q, k, v, projection))[:, 0]


def favor_matrix(x1_LD, x2_LD, m: int, seed: int) -> np.ndarray:
  """FAVOR+ estimate of softmax(X1 X2^T) (positive orthogonal features)."""
  proj = gaussian_orthogonal_random_matrix(jax.random.PRNGKey(seed), m,
                                           x1_LD.shape[1])
  return attention_matrix(*inputs_and_weights(x1_LD, x2_LD), proj)


@functools.lru_cache(maxsize=None)
def _fit_fn(length: int, width: int, steps: int, rows: int):
  """jit((a, rng, rho, eps, dims) -> (X1, X2)) for one shape; cached.

  The inputs have `width` columns of which the first `dims` are used (the
  rest stay 0), so one compilation serves every d <= width.
  """
  opt = optax.adam(optax.cosine_decay_schedule(0.05, steps, alpha=0.05))

  def project(p, rho, keep_D):
    return jax.tree.map(lambda v: keep_D * v * jnp.minimum(
        1.0, rho / (jnp.linalg.norm(v, axis=1, keepdims=True) + 1e-12)), p)

  def loss(p, a_BL, idx_B, eps):
    on = a_BL > 0
    logits = p["q"][idx_B] @ p["k"].T
    r = logits - jnp.log(jnp.where(on, a_BL, 1.0))
    mean = jnp.sum(jnp.where(on, r, 0), 1, keepdims=True) / jnp.sum(
        on, 1, keepdims=True)
    spread = jnp.sum(jnp.where(on, (r - mean) ** 2, 0))
    low = jnp.min(jnp.where(on, logits, jnp.inf), 1, keepdims=True)
    # 0.3: a margin below the off-pattern limit, so the fit does not stop
    # exactly on the boundary.
    off = jnp.sum(jnp.where(on, 0, jax.nn.relu(
        logits - low - jnp.log(eps) + 0.3) ** 2))
    return (spread + off) / idx_B.shape[0]

  def fit(a_LL, rng, rho, eps, dims):
    k1, k2, k3 = jax.random.split(rng, 3)
    keep_D = (jnp.arange(width) < dims).astype(jnp.float32)
    p = project({"q": jax.random.normal(k1, (length, width)),
                 "k": jax.random.normal(k2, (length, width))}, rho, keep_D)

    def step(carry, key):
      p, state = carry
      idx = jax.random.permutation(key, length)[:rows]
      g = jax.grad(loss)(p, a_LL[idx], idx, eps)
      updates, state = opt.update(g, state)
      return (project(optax.apply_updates(p, updates), rho, keep_D),
              state), None

    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)),
                             jax.random.split(k3, steps))
    return p["q"], p["k"]

  return jax.jit(fit)


def fit_radius(eps: float, k: int) -> float:
  """rho: the fit's rows have norm <= rho, rho^2 = 2 sqrt(k) C, about twice
  the construction's |x1_i| |x2_j| (the norm of a column of B)."""
  return float(np.sqrt(2 * np.sqrt(k) * gap(eps)))


def fit_steps(length: int) -> int:
  """Adam steps of the fit: 400, or 1.5 L beyond (about 400 passes over the
  rows at 256 rows a step; fewer did not converge at L = 1024)."""
  return max(400, int(1.5 * length))


def fitted(a_LL: np.ndarray, d: int, eps: float, seed: int, *,
           steps: int | None = None, rows: int = 256
           ) -> tuple[np.ndarray, np.ndarray]:
  """Gradient-fitted (X1, X2) `[L, d]` with rows of norm <= fit_radius."""
  length = a_LL.shape[0]
  steps = steps or fit_steps(length)
  k = int((a_LL[0] > 0).sum())
  width = 1 << max(3, (d - 1).bit_length())
  fit = _fit_fn(length, width, steps, min(rows, length))
  q, k = fit(jnp.asarray(a_LL), jax.random.PRNGKey(seed),
             jnp.float32(fit_radius(eps, k)), jnp.float32(eps),
             jnp.int32(d))
  return np.asarray(q)[:, :d], np.asarray(k)[:, :d]


def row_scores(m_LL: np.ndarray, a_LL: np.ndarray, eps: float
               ) -> tuple[float, float]:
  """(fraction of rows within precision eps, fraction of rows whose k
  largest entries are exactly the pattern) of an attention matrix M."""
  on = a_LL > 0
  logm = np.log(np.maximum(np.asarray(m_LL, np.float64), 1e-300))
  r = logm - np.log(np.where(on, a_LL, 1.0))
  spread = np.where(on, r, -np.inf).max(1) - np.where(on, r, np.inf).min(1)
  low = np.where(on, logm, np.inf).min(1)
  high_off = np.where(on, -np.inf, logm).max(1)
  ok = (spread <= np.log1p(eps)) & (high_off - low <= np.log(eps))
  return float(ok.mean()), float((high_off < low).mean())
