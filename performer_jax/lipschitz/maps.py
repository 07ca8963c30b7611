"""Multi-head self-attention as pure functions of weights (Kim et al. 2021).

References for input Jacobians and for checking `linen.MultiHeadAttention`,
on its parameter dicts: query, key (dot-product only; L2 ties W_K = W_Q),
value kernels `[D, H, K]` (K the head dim), out `[H, K, O]`, bias `[O]`.
X is [N, D], W_Q,h = query_kernel[:, h, :]. L2-MHA:
  P_h[i, j] = softmax_j(-||x_i W_Q,h - x_j W_Q,h||^2 / sqrt(K)),
  A_h = W_Q,h W_Q,h^T / sqrt(K),  F_h(X) = P_h X A_h,
  L2-MHA(X) = [F_1(X) W_V,1, ..., F_H(X) W_V,H] W_O + b_O.
Explicit pairwise differences keep it independent of the production kernel.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

Params = Mapping[str, Any]


def _get(params: Params, name: str, leaf: str, *, optional=False):
  if name not in params or (leaf not in params[name] and not optional):
    raise KeyError(
        f"attention params need {name!r}/{leaf!r}; got keys "
        f"{ {k: sorted(v) for k, v in params.items()} }. Pass the attention "
        "module's own param dict (the one holding query/value/out).")
  return params[name].get(leaf)


def _causal_mask(n_q: int, n_k: int) -> jax.Array:
  """[n_q, n_k] bool, True = attend; position i sees j <= i (and itself)."""
  return jnp.arange(n_k)[None, :] <= jnp.arange(n_q)[:, None]


def _masked_softmax(logits_HNM, mask_NM):
  if mask_NM is not None:
    logits_HNM = jnp.where(mask_NM, logits_HNM, -jnp.inf)
  return jax.nn.softmax(logits_HNM, axis=-1)


def l2_mha(params: Params, x_ND: jax.Array, *, causal: bool = False,
           key_mask_N: jax.Array | None = None) -> jax.Array:
  """Tied L2 multi-head self-attention of Kim et al. (2021).

  Args:
    params: {"query": {"kernel": [D, H, K]}, "value": {"kernel": [D, H, K]},
      "out": {"kernel": [H, K, O], "bias": [O] (optional)}}.
    x_ND: float [N, D] input tokens (one sequence; vmap for batches).
    causal: if True token i attends to tokens j <= i only.
    key_mask_N: optional bool [N], True = may be attended to. A token always
      attends to itself, whatever the mask says.

  Returns:
    float [N, O] output.
  """
  w_q_DHK = _get(params, "query", "kernel")
  w_v_DHK = _get(params, "value", "kernel")
  w_o_HKO = _get(params, "out", "kernel")
  b_o_O = _get(params, "out", "bias", optional=True)
  if "key" in params:
    raise ValueError("L2 attention here is the tied variant (W_K = W_Q); "
                     "the params have a separate 'key' kernel.")
  head_dim = w_q_DHK.shape[-1]
  scale = jnp.sqrt(jnp.asarray(head_dim, x_ND.dtype))
  q_NHK = jnp.einsum("nd,dhk->nhk", x_ND, w_q_DHK)
  diff_NMHK = q_NHK[:, None] - q_NHK[None, :]
  logits_HNM = -jnp.einsum("nmhk,nmhk->hnm", diff_NMHK, diff_NMHK) / scale
  n = x_ND.shape[0]
  mask_NM = _causal_mask(n, n) if causal else None
  if key_mask_N is not None:
    allowed_NM = jnp.broadcast_to(key_mask_N[None, :], (n, n))
    mask_NM = allowed_NM if mask_NM is None else mask_NM & allowed_NM
  if mask_NM is not None:
    mask_NM = mask_NM | jnp.eye(n, dtype=bool)
  p_HNM = _masked_softmax(logits_HNM, mask_NM)
  # F_h(X) W_V,h = P_h X A_h W_V,h, with A_h = W_Q,h W_Q,h^T / sqrt(K).
  a_HDD = jnp.einsum("dhk,ehk->hde", w_q_DHK, w_q_DHK) / scale
  pxa_NHD = jnp.einsum("hnm,md,hde->nhe", p_HNM, x_ND, a_HDD)
  heads_NHK = jnp.einsum("nhd,dhk->nhk", pxa_NHD, w_v_DHK)
  out_NO = jnp.einsum("nhk,hko->no", heads_NHK, w_o_HKO)
  return out_NO if b_o_O is None else out_NO + b_o_O


def l2_mha_first_row(params: Params, x_ND: jax.Array) -> jax.Array:
  """Row 0 of `l2_mha(params, x_ND)` (no masks) in O(N) instead of O(N^2).

  Lets the inf-norm lower-bound search (which by permutation equivariance
  only needs token 0's Jacobian rows) scale to N in the thousands.

  Returns:
    float [O], equal to l2_mha(params, x_ND)[0].
  """
  w_q_DHK = _get(params, "query", "kernel")
  w_v_DHK = _get(params, "value", "kernel")
  w_o_HKO = _get(params, "out", "kernel")
  b_o_O = _get(params, "out", "bias", optional=True)
  scale = jnp.sqrt(jnp.asarray(w_q_DHK.shape[-1], x_ND.dtype))
  q_NHK = jnp.einsum("nd,dhk->nhk", x_ND, w_q_DHK)
  diff_NHK = q_NHK[0][None] - q_NHK
  p_HN = jax.nn.softmax(-jnp.einsum("nhk,nhk->hn", diff_NHK, diff_NHK) / scale,
                        axis=-1)
  a_HDD = jnp.einsum("dhk,ehk->hde", w_q_DHK, w_q_DHK) / scale
  pxa_HD = jnp.einsum("hn,nd,hde->he", p_HN, x_ND, a_HDD)
  out_O = jnp.einsum("hd,dhk,hko->o", pxa_HD, w_v_DHK, w_o_HKO)
  return out_O if b_o_O is None else out_O + b_o_O


def dot_product_mha(params: Params, x_ND: jax.Array, *,
                    causal: bool = False) -> jax.Array:
  """Standard (softmax dot-product) multi-head self-attention.

  Args:
    params: {"query"|"key"|"value": {"kernel": [D, H, K], "bias": [H, K]
      (optional)}, "out": {"kernel": [H, K, O], "bias": [O] (optional)}}.
    x_ND: float [N, D] input tokens.
    causal: if True token i attends to tokens j <= i only.

  Returns:
    float [N, O] output: softmax(Q K^T / sqrt(K)) V W_O per head.
  """
  def proj(name):
    kernel = _get(params, name, "kernel")
    bias = _get(params, name, "bias", optional=True)
    y = jnp.einsum("nd,dhk->nhk", x_ND, kernel)
    return y if bias is None else y + bias

  q_NHK, k_NHK, v_NHK = proj("query"), proj("key"), proj("value")
  head_dim = q_NHK.shape[-1]
  logits_HNM = jnp.einsum("nhk,mhk->hnm", q_NHK, k_NHK) / jnp.sqrt(
      jnp.asarray(head_dim, x_ND.dtype))
  n = x_ND.shape[0]
  p_HNM = _masked_softmax(logits_HNM, _causal_mask(n, n) if causal else None)
  heads_NHK = jnp.einsum("hnm,mhk->nhk", p_HNM, v_NHK)
  out_NO = jnp.einsum("nhk,hko->no", heads_NHK,
                      _get(params, "out", "kernel"))
  b_o_O = _get(params, "out", "bias", optional=True)
  return out_NO if b_o_O is None else out_NO + b_o_O


def unit_l2_params(dim: int = 1, num_heads: int = 1, dtype=jnp.float32):
  """Weights of the paper's D = H = 1 example generalised: all entries 1."""
  head_dim = dim // num_heads
  ones = lambda *s: jnp.ones(s, dtype)
  return {"query": {"kernel": ones(dim, num_heads, head_dim)},
          "value": {"kernel": ones(dim, num_heads, head_dim)},
          "out": {"kernel": ones(num_heads, head_dim, dim)}}


def unit_dot_product_params(dim: int = 1, num_heads: int = 1,
                            dtype=jnp.float32):
  """All-ones dot-product weights; D = H = 1 gives softmax(X X^T) X."""
  params = unit_l2_params(dim, num_heads, dtype)
  params["key"] = params["query"]
  return params


def random_l2_params(rng: jax.Array, dim: int, num_heads: int,
                     head_dim: int | None = None, out_dim: int | None = None,
                     scale: float = 1.0, dtype=jnp.float32):
  """Gaussian L2-MHA weights with std scale / sqrt(fan_in) (for tests)."""
  head_dim = head_dim or dim // num_heads
  out_dim = out_dim or dim
  k1, k2, k3, k4 = jax.random.split(rng, 4)
  normal = lambda k, s, fan: scale * jax.random.normal(k, s, dtype) / jnp.sqrt(
      jnp.asarray(fan, dtype))
  return {
      "query": {"kernel": normal(k1, (dim, num_heads, head_dim), dim)},
      "value": {"kernel": normal(k2, (dim, num_heads, head_dim), dim)},
      "out": {"kernel": normal(k3, (num_heads, head_dim, out_dim),
                               num_heads * head_dim),
              "bias": normal(k4, (out_dim,), 1)},
  }
