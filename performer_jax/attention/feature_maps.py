"""Kernel feature maps phi for FAVOR+, in a factored, overflow-free form.

Every map returns `(feats, log_amp)`, the features being
`exp(log_amp)[..., None] * feats`: feats float32 `[..., F]`, bounded (<= 1 for
the exponential maps); log_amp float32 `[...]`, or None when it is 0. Query
amplitudes cancel in the normalization and are dropped; key amplitudes are
stabilized in chunked.py. Constant factors (`1/sqrt(m)`) cancel and are
omitted. Inputs are pre-scaled by `d^(-1/4)`, so that `exp(x . y)` is the
softmax kernel `exp(q . k / sqrt(d))`.
"""

from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp

RELU_EPS = 1e-3
FeatureFn = Callable[[jax.Array, jax.Array | None], jax.Array]


def _project(x: jax.Array, projection_MD: jax.Array) -> jax.Array:
  return jnp.einsum("...d,md->...m", x, projection_MD,
                    precision=jax.lax.Precision.HIGHEST)


def _exp_features(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  # The per-token max is pulled into log_amp; stop_gradient is exact because
  # feats * exp(log_amp) does not depend on the value subtracted.
  log_amp = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  return jnp.exp(logits - log_amp[..., None]), log_amp


def softmax_positive(x, projection_MD):
  """Positive random features `exp(w.x - |x|^2/2)` (FAVOR+, Lemma 1)."""
  half_sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  return _exp_features(_project(x, projection_MD) - half_sq)


def softmax_hyperbolic(x, projection_MD):
  """Hyperbolic positive features `exp(+-w.x - |x|^2/2)`: 2m features."""
  half_sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  wx = _project(x, projection_MD)
  return _exp_features(jnp.concatenate([wx, -wx], axis=-1) - half_sq)


def softmax_trig(x, projection_MD):
  """Trigonometric features `exp(|x|^2/2) (sin, cos)(w.x)`: 2m, can be < 0."""
  wx = _project(x, projection_MD)
  feats = jnp.concatenate([jnp.sin(wx), jnp.cos(wx)], axis=-1)
  return feats, 0.5 * jnp.sum(x * x, axis=-1)


def relu(x, projection_MD, eps: float = RELU_EPS):
  """Generalized attention `relu(w.x) + eps`; `relu(x) + eps` if no projection."""
  pre = x if projection_MD is None else _project(x, projection_MD)
  return jax.nn.relu(pre) + eps, None


KERNELS: dict[str, Callable] = {
    "softmax": softmax_positive,
    "softmax_hyperbolic": softmax_hyperbolic,
    "softmax_trig": softmax_trig,
    "relu": relu,
}

NEEDS_PROJECTION = {"softmax": True, "softmax_hyperbolic": True,
                    "softmax_trig": True, "relu": False}


def check_feature_fn(fn: Callable) -> None:
  """A TypeError unless `fn` can be called as `fn(x, projection)`."""
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):
    return  # no introspectable signature (a C function): trust it
  try:
    signature.bind(None, None)
  except TypeError:
    raise TypeError(
        f"kernel={getattr(fn, '__name__', fn)!r} must be a function "
        f"`(x, projection) -> features`, called as fn(x [..., D], "
        f"projection [M, D] or None) -> non-negative [..., F]; it has the "
        f"signature {signature}. Add the projection argument (it may "
        "ignore it: `lambda x, projection: jax.nn.elu(x) + 1`).") from None


def resolve(kernel: str | FeatureFn, projection_MD: jax.Array | None):
  """Returns `fn(x) -> (feats, log_amp)` for a kernel name or user function.

  A user function takes `(x [..., D], projection [M, D] or None)` and returns
  non-negative features `[..., F]`; it gets log_amp None.
  """
  if callable(kernel):
    check_feature_fn(kernel)

    def user_fn(x):
      feats = kernel(x, projection_MD)
      if feats.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            "a user feature function must map [..., D] to [..., F]; got "
            f"{x.shape} -> {feats.shape}.")
      return feats.astype(jnp.float32), None
    return user_fn
  if kernel not in KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; choose one of "
                     f"{sorted(KERNELS)} or pass a feature function.")
  if NEEDS_PROJECTION[kernel] and projection_MD is None:
    raise ValueError(f"kernel {kernel!r} needs a projection [num_features, "
                     "head_dim]; draw one with "
                     "gaussian_orthogonal_random_matrix.")
  return lambda x: KERNELS[kernel](x, projection_MD)


# Guards for the normalizer D. Non-negative features make D >= 0 and the
# output a convex combination of values, so D only needs keeping off exact
# zero (a query that sees no key); the floor is far below any D that carries
# information yet keeps num / D^2 in the backward pass finite in float32.
# Trigonometric features can make D cross zero: there the official additive
# guard `D + 2 eps [|D| <= eps]` (eps = 1e-6) is used.
POSITIVE_FLOOR = 1e-30
SIGNED_EPS = 1e-6


def normalize(num: jax.Array, den: jax.Array,
               signed_features: bool) -> jax.Array:
  """num / den with den guarded; both are first divided by a stop-gradient
  copy of |den|, which changes nothing in exact arithmetic but keeps the
  backward pass from forming den**2 (it underflows for den ~ 1e-20, which
  large-norm inputs reach, and turns the gradients into NaN)."""
  if signed_features:
    den = den + 2.0 * SIGNED_EPS * (jnp.abs(den) <= SIGNED_EPS).astype(
        den.dtype)
    scale = jnp.maximum(jnp.abs(den), SIGNED_EPS)
  else:
    den = jnp.maximum(den, POSITIVE_FLOOR)
    scale = den
  scale = jax.lax.stop_gradient(scale)
  return (num / scale) / (den / scale)
