"""Upper bounds on the Lipschitz constant of L2 multi-head attention.

Theorem 3.2 of Kim, Papamakarios, Mnih (ICML 2021), N >= 3 tokens,
phi^-1(N-1) = W_0((N-1)/e), the paper's D/H = the head dim K:
  Lip_inf <= (4 phi^-1(N-1) + 1/sqrt(D/H)) ||W_O^T||_inf
             * max_h ||W_Q,h||_inf ||W_Q,h^T||_inf * max_h ||W_V,h^T||_inf
  Lip_2   <= sqrt(N)/sqrt(D/H) (4 phi^-1(N-1) + 1)
             * sqrt(sum_h ||W_Q,h||_2^2 ||W_V,h||_2^2) ||W_O||_2
for X -> L2-MHA(X) on flattened X in R^{N x D}, weights as in maps.py,
||M||_inf the max absolute row sum. N < 3 gets bound(3): with a far-away
token (zero weight in the limit), an input is a limit of longer ones. Each
row of a masked map is the unmasked map on the tokens it sees, and the
bound grows with N, so the inf bound covers the causal mask and the real
rows of a padding mask; the 2-norm only gives
||J||_2^2 <= sum_i bound_2(n_i)^2 (`causal=True`: n_i = i).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.core.meta
import jax
import jax.numpy as jnp

from performer_jax.lipschitz import lambertw

NORMS = ("inf", "2")


def _inf_norm(m_XY):
  """Operator inf-norm (max absolute row sum) of the trailing 2 axes."""
  return jnp.max(jnp.sum(jnp.abs(m_XY), axis=-1), axis=-1)


def _spectral_norm(m_XY):
  """Operator 2-norm (largest singular value) of the trailing 2 axes."""
  return jnp.linalg.norm(m_XY, ord=2, axis=(-2, -1))


def spectral_norm_upper_bound(m_XY: jax.Array,
                              num_squarings: int = 6) -> jax.Array:
  """A guaranteed upper bound on the largest singular value, matmuls only.

  With G = M^T M (or M M^T, the smaller one) and k = 2^num_squarings,
  sigma_max^2 = lambda_max(G) <= tr(G^k)^(1/k) <= rank^(1/k) lambda_max(G),
  so the result overestimates sigma_max by a factor of at most
  rank^(1/(2k)) (1.033 for rank 64 and the default k = 64). G^k is formed by
  repeated squaring with trace normalization, so nothing overflows.

  Unlike the SVD this needs no LAPACK call: on jax 0.10.2 CPU a jitted
  training step that contains an SVD and donates its buffers (as the
  project trainer does) hangs on its second call, so the contractive modules
  use this bound for the 2-norm.

  Args:
    m_XY: float [..., X, Y].
    num_squarings: j >= 0; k = 2^j.

  Returns:
    float [...] upper bounds (>= the exact spectral norms).
  """
  m_XY = m_XY.astype(jnp.float32)
  if m_XY.shape[-1] <= m_XY.shape[-2]:
    g = jnp.einsum("...xy,...xz->...yz", m_XY, m_XY)
  else:
    g = jnp.einsum("...xy,...zy->...xz", m_XY, m_XY)
  trace = lambda a: jnp.trace(a, axis1=-2, axis2=-1)
  tiny = jnp.finfo(jnp.float32).tiny
  t = jnp.maximum(trace(g), tiny)
  log_lambda = jnp.log(t)
  a = g / t[..., None, None]
  for i in range(1, num_squarings + 1):
    a = a @ a
    t = jnp.maximum(trace(a), tiny)
    log_lambda = log_lambda + jnp.log(t) / 2 ** i
    a = a / t[..., None, None]
  return jnp.exp(0.5 * log_lambda)


def _check_weights(w_q_DHK, w_v_DHK, w_o_HKO):
  if w_q_DHK.ndim != 3 or w_v_DHK.ndim != 3 or w_o_HKO.ndim != 3:
    raise ValueError(
        "expected query/value kernels [D, H, K] and out kernel [H, K, O]; got "
        f"{w_q_DHK.shape}, {w_v_DHK.shape}, {w_o_HKO.shape}")
  if w_q_DHK.shape != w_v_DHK.shape or w_o_HKO.shape[:2] != w_q_DHK.shape[1:]:
    raise ValueError(
        "query kernel [D, H, K], value kernel [D, H, K] and out kernel "
        f"[H, K, O] disagree: {w_q_DHK.shape}, {w_v_DHK.shape}, "
        f"{w_o_HKO.shape}")


def _per_head(w_q_DHK, w_v_DHK, w_o_HKO):
  """Checked weights as (head_dim, W_Q,h [H, D, K], W_V,h [H, D, K],
  W_O [(H K), O]): the per-head matrices of Theorem 3.2."""
  _check_weights(w_q_DHK, w_v_DHK, w_o_HKO)
  num_heads, head_dim = w_q_DHK.shape[1:]
  return (head_dim, jnp.transpose(w_q_DHK, (1, 0, 2)),
          jnp.transpose(w_v_DHK, (1, 0, 2)),
          w_o_HKO.reshape(num_heads * head_dim, -1))


def _check_n(num_tokens):
  if int(num_tokens) < 1:
    raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
  return max(int(num_tokens), 3)


def lip_inf_factor(num_tokens: int, head_dim: int) -> jax.Array:
  """4 phi^-1(N - 1) + 1 / sqrt(D/H): the weight-free factor of Lip_inf."""
  n = _check_n(num_tokens)
  return 4.0 * lambertw.phi_inverse(n - 1) + 1.0 / jnp.sqrt(float(head_dim))


def lip_2_factor(num_tokens: int, head_dim: int) -> jax.Array:
  """sqrt(N) / sqrt(D/H) (4 phi^-1(N - 1) + 1): weight-free factor of Lip_2."""
  n = _check_n(num_tokens)
  return (jnp.sqrt(float(n)) / jnp.sqrt(float(head_dim))
          * (4.0 * lambertw.phi_inverse(n - 1) + 1.0))


def l2_mha_bound_inf(w_q_DHK, w_v_DHK, w_o_HKO, *, num_tokens: int):
  """Theorem 3.2 upper bound on the inf-norm Lipschitz constant of L2-MHA.

  Args:
    w_q_DHK: query kernel [D, H, K] (W_Q = W_K).
    w_v_DHK: value kernel [D, H, K].
    w_o_HKO: out kernel [H, K, O].
    num_tokens: sequence length N (any mask that keeps self-attention is
      covered, see the module docstring).

  Returns:
    float scalar, differentiable in the weights.
  """
  head_dim, w_q_HDK, w_v_HDK, w_o_MO = _per_head(w_q_DHK, w_v_DHK, w_o_HKO)
  q_term = jnp.max(_inf_norm(w_q_HDK) * _inf_norm(jnp.swapaxes(w_q_HDK, 1, 2)))
  v_term = jnp.max(_inf_norm(jnp.swapaxes(w_v_HDK, 1, 2)))
  o_term = _inf_norm(w_o_MO.T)
  return lip_inf_factor(num_tokens, head_dim) * o_term * q_term * v_term


def l2_mha_bound_2(w_q_DHK, w_v_DHK, w_o_HKO, *, num_tokens: int,
                   causal: bool = False, exact_spectral: bool = True):
  """Theorem 3.2 upper bound on the 2-norm Lipschitz constant of L2-MHA.

  Args:
    w_q_DHK: query kernel [D, H, K] (W_Q = W_K).
    w_v_DHK: value kernel [D, H, K].
    w_o_HKO: out kernel [H, K, O].
    num_tokens: sequence length N.
    causal: bound the causally masked map instead:
      sqrt(sum_{i=1..N} bound_2(i)^2) (see the module docstring).
    exact_spectral: exact spectral norms (SVD); False uses
      `spectral_norm_upper_bound` (at most ~3% larger, no LAPACK call), which
      is what the contractive modules use inside training steps.

  Returns:
    float scalar, differentiable in the weights.
  """
  head_dim, w_q_HDK, w_v_HDK, w_o_MO = _per_head(w_q_DHK, w_v_DHK, w_o_HKO)
  spectral = _spectral_norm if exact_spectral else spectral_norm_upper_bound
  qv_term = jnp.sqrt(jnp.sum(spectral(w_q_HDK) ** 2 * spectral(w_v_HDK) ** 2))
  weights = qv_term * spectral(w_o_MO)
  n = _check_n(num_tokens)
  if not causal:
    return lip_2_factor(n, head_dim) * weights
  sizes = jnp.maximum(jnp.arange(1, int(num_tokens) + 1), 3).astype(
      jnp.result_type(float))
  factors = (jnp.sqrt(sizes) / jnp.sqrt(float(head_dim))
             * (4.0 * lambertw.phi_inverse(sizes - 1) + 1.0))
  return jnp.sqrt(jnp.sum(factors ** 2)) * weights


@functools.partial(jax.jit, static_argnames=("num_tokens", "norm", "causal",
                                             "exact_spectral"))
def _jitted_bound(w_q_DHK, w_v_DHK, w_o_HKO, *, num_tokens, norm, causal,
                  exact_spectral):
  if norm == "inf":
    return l2_mha_bound_inf(w_q_DHK, w_v_DHK, w_o_HKO, num_tokens=num_tokens)
  return l2_mha_bound_2(w_q_DHK, w_v_DHK, w_o_HKO, num_tokens=num_tokens,
                        causal=causal, exact_spectral=exact_spectral)


def l2_mha_bound(w_q_DHK, w_v_DHK, w_o_HKO, *, num_tokens: int,
                 norm: str = "inf", causal: bool = False,
                 exact_spectral: bool = True):
  """Dispatches to the inf- or 2-norm bound (`norm` is "inf" or "2").

  Compiled once per (shapes, num_tokens, norm, causal); also usable inside
  jit and grad. `exact_spectral` as in `l2_mha_bound_2`.
  """
  if norm in NORMS:
    _check_weights(w_q_DHK, w_v_DHK, w_o_HKO)
    _check_n(num_tokens)
    return _jitted_bound(w_q_DHK, w_v_DHK, w_o_HKO,
                         num_tokens=int(num_tokens), norm=norm,
                         causal=bool(causal) and norm == "2",
                         exact_spectral=bool(exact_spectral))
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def find_l2_attention_params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  """Finds the (single) tied L2 attention param dict inside `variables`.

  Accepts the module's variables `{"params": {...}}`, its param dict, or a
  bigger tree holding exactly one dict with `query`, `value` and `out`
  kernels (e.g. `{"params": {"attention": {"query": ...}}}`).

  Raises:
    ValueError: no such dict, several of them (pass the one you mean), or a
      separate `key` kernel (untied weights have no finite Lipschitz bound).
  """
  # Modules built with nn.with_logical_partitioning box their params.
  variables = flax.core.meta.unbox(variables)
  found = []

  def visit(tree, path):
    if not isinstance(tree, Mapping):
      return
    if {"query", "value", "out"} <= set(tree):
      found.append((path, tree))
      return
    for name, sub in tree.items():
      visit(sub, path + (name,))

  visit(variables, ())
  if not found:
    raise ValueError(
        "no attention params (a dict with 'query', 'value' and 'out') found; "
        "pass the variables of an L2 MultiHeadAttention "
        "(AttentionConfig(kind='l2'))")
  if len(found) > 1:
    raise ValueError(
        f"found {len(found)} attention param dicts at "
        f"{['/'.join(p) for p, _ in found]}; pass one of them")
  path, params = found[0]
  if "key" in params:
    raise ValueError(
        f"attention params at {'/'.join(path) or '<root>'} have a separate "
        "'key' kernel: only tied L2 attention (W_K = W_Q, "
        "AttentionConfig(kind='l2')) has a Lipschitz bound")
  return params


def l2_mha_bound_from_variables(variables: Mapping[str, Any], *,
                                num_tokens: int, norm: str = "inf",
                                causal: bool = False,
                                exact_spectral: bool = True):
  """Theorem 3.2 bound computed from an L2 attention module's variables.

  Args:
    variables: see `find_l2_attention_params`.
    num_tokens: sequence length N.
    norm: "inf" or "2".
    causal: for norm "2", bound the causally masked map (see module doc).
    exact_spectral: as in `l2_mha_bound_2`.

  Returns:
    float scalar upper bound on Lip_norm of the module's map [N, D] -> [N, O].
  """
  params = find_l2_attention_params(variables)
  return l2_mha_bound(params["query"]["kernel"], params["value"]["kernel"],
                      params["out"]["kernel"], num_tokens=num_tokens,
                      norm=norm, causal=causal, exact_spectral=exact_spectral)
