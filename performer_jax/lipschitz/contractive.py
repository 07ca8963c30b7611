"""Contractive blocks: maps [B, L, D] -> [B, L, D] with Lipschitz constant < 1.

`ContractiveL2Attention` scales L2 `MultiHeadAttention` by c / bound, the
Theorem 3.2 bound (bounds.py) recomputed from the current weights and
length at every call, so Lip <= c < 1 per sequence (over real tokens, not
padding) for every weight value. `ContractiveMlp` is Dense -> ELU -> Dense,
each kernel divided by its operator norm, scaled by c. The gradient flows
through the bound; `stop_gradient_bound=True` ignores the divisor's
dependence on the weights: cheaper, as spectral normalization does, but
biased.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from performer_jax.linen import MultiHeadAttention
from performer_jax.lipschitz import bounds
from performer_jax.schemas import AttentionConfig


def check_c_norm(c, norm):
  if not 0.0 < c < 1.0:
    raise ValueError(f"c must be in (0, 1) for a contraction, got {c}")
  if norm not in bounds.NORMS:
    raise ValueError(f"norm must be one of {bounds.NORMS}, got {norm!r}")


class ContractiveL2Attention(nn.Module):
  """c * L2-MHA(X) / bound(W): tied L2 self-attention with Lip < c.

  Attributes:
    num_heads: H.
    qkv_features: total query/value width (default: input width).
    c: target Lipschitz constant, in (0, 1).
    norm: "inf" or "2": the norm in which Lip <= c is guaranteed.
    causal: causal masking (self always attended).
    stop_gradient_bound: see the module docstring.
    dtype, param_dtype: as MultiHeadAttention (the bound is float32).
    kernel_init: initializer of W_Q, W_V and W_O.

  Params: {"attention": {"query", "value", "out"}} (the wrapped module's).
  """
  num_heads: int
  qkv_features: int | None = None
  c: float = 0.9
  norm: str = "inf"
  causal: bool = False
  stop_gradient_bound: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, key_mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """[B, L, D] -> [B, L, D] (dtype of the attention module)."""
    check_c_norm(self.c, self.norm)
    attention = MultiHeadAttention(
        num_heads=self.num_heads, config=AttentionConfig(kind="l2"),
        qkv_features=self.qkv_features, causal=self.causal, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        name="attention")
    y_BLD = attention(x_BLD, key_mask=key_mask, deterministic=deterministic)
    bound = self.bound(x_BLD.shape[-2], attention.variables["params"])
    return (y_BLD * (self.c / bound)).astype(y_BLD.dtype)

  def bound(self, num_tokens: int, attention_params) -> jax.Array:
    """The divisor: Theorem 3.2 bound of the wrapped attention (float32)."""
    params = jax.tree_util.tree_map(lambda w: jnp.asarray(w, jnp.float32),
                                    attention_params)
    # exact_spectral=False: no SVD inside training steps (see
    # bounds.spectral_norm_upper_bound); still a valid upper bound.
    bound = bounds.l2_mha_bound_from_variables(
        params, num_tokens=num_tokens, norm=self.norm, causal=self.causal,
        exact_spectral=False)
    return jax.lax.stop_gradient(bound) if self.stop_gradient_bound else bound


def dense_operator_norm(kernel_IO: jax.Array, norm: str) -> jax.Array:
  """Lipschitz constant of X -> X W (rows of X) in the given norm.

  "inf": ||W^T||_inf, the max absolute column sum of W [in, out] (exact);
  "2": an upper bound on the largest singular value of W, at most ~3% above
    it (`bounds.spectral_norm_upper_bound`, which avoids an SVD).
  """
  kernel_IO = kernel_IO.astype(jnp.float32)
  if norm == "inf":
    return jnp.max(jnp.sum(jnp.abs(kernel_IO), axis=0))
  if norm == "2":
    return bounds.spectral_norm_upper_bound(kernel_IO)
  raise ValueError(f"norm must be one of {bounds.NORMS}, got {norm!r}")


class NormalizedDense(nn.Module):
  """Dense layer whose kernel is divided by its operator norm (Lip <= 1).

  Attributes:
    features: output width.
    norm: "inf" or "2".
    stop_gradient_norm: stop the gradient through the divisor.
    kernel_axes: logical axis names of the kernel [in, out].
    dtype, param_dtype: compute and parameter dtypes.
  """
  features: int
  norm: str = "inf"
  stop_gradient_norm: bool = False
  kernel_axes: tuple[str, str] = ("embed", "mlp")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLI: jax.Array) -> jax.Array:
    kernel_IO = self.param(
        "kernel", nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), self.kernel_axes),
        (x_BLI.shape[-1], self.features), self.param_dtype)
    bias_O = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                             self.kernel_axes[1:]),
        (self.features,), self.param_dtype)
    scale = dense_operator_norm(kernel_IO, self.norm)
    if self.stop_gradient_norm:
      scale = jax.lax.stop_gradient(scale)
    kernel_IO = (kernel_IO / scale).astype(self.dtype)
    return jnp.einsum("bli,io->blo", x_BLI.astype(self.dtype),
                      kernel_IO) + bias_O.astype(self.dtype)


class ContractiveMlp(nn.Module):
  """c * Dense(D) ELU Dense(F): a per-token MLP with Lip <= c.

  Attributes:
    hidden_dim: F.
    c: target Lipschitz constant, in (0, 1).
    norm: "inf" or "2".
    stop_gradient_norm: stop the gradient through the kernels' norms.
    dtype, param_dtype: compute and parameter dtypes.

  Params: {"wi": {"kernel" [D, F], "bias"}, "wo": {"kernel" [F, D], "bias"}}.
  """
  hidden_dim: int
  c: float = 0.9
  norm: str = "inf"
  stop_gradient_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, L, D]."""
    check_c_norm(self.c, self.norm)
    dense = lambda features, axes, name: NormalizedDense(
        features, norm=self.norm, stop_gradient_norm=self.stop_gradient_norm,
        kernel_axes=axes, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    h_BLF = nn.elu(dense(self.hidden_dim, ("embed", "mlp"), "wi")(x_BLD))
    return self.c * dense(x_BLD.shape[-1], ("mlp", "embed"), "wo")(h_BLF)
