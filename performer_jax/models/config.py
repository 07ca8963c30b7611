"""The `model` config section: defaults and validation.

`make_model` only accepts a model section that passes `validate_model_config`,
so every typo or bad value fails at construction with a message naming the
key and its allowed values, instead of surfacing as a shape error in jit.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POSEMB_KINDS = ("learned", "sinusoidal")
ATTENTION_KINDS = ("softmax", "favor", "l2")
FAVOR_KERNELS = ("softmax", "softmax_hyperbolic", "softmax_trig", "relu")
SCALINGS = ("chi", "sqrt_d")

_MODEL_KEYS = ("num_layers", "num_heads", "emb_dim", "mlp_dim", "dropout_rate",
               "max_len", "posemb", "dtype", "param_dtype", "remat",
               "scan_layers", "attention")
_ATTENTION_KEYS = ("kind", "kernel", "num_features", "orthogonal", "scaling",
                   "chunk_size", "implementation", "redraw_every")
IMPLEMENTATIONS = ("slim", "autodiff")


def default_model_config() -> ml_collections.ConfigDict:
  """A small model (2 layers, width 128): a starting point for configs."""
  cfg = ml_collections.ConfigDict()
  cfg.num_layers = 2
  cfg.num_heads = 4
  cfg.emb_dim = 128
  cfg.mlp_dim = 256
  cfg.dropout_rate = 0.1
  cfg.max_len = 512
  cfg.posemb = "learned"
  cfg.dtype = "float32"
  cfg.param_dtype = "float32"
  cfg.remat = False
  cfg.scan_layers = False
  cfg.attention = ml_collections.ConfigDict()
  cfg.attention.kind = "favor"
  cfg.attention.kernel = "softmax"
  # `num_features` may be None (deterministic ReLU features), so declare its
  # type explicitly to let configs switch between None and an int.
  cfg.attention.num_features = ml_collections.FieldReference(
      128, field_type=int)
  cfg.attention.orthogonal = True
  cfg.attention.scaling = "chi"
  cfg.attention.chunk_size = 128
  # Causal FAVOR+ backward: "slim" recomputes inside each chunk (less memory,
  # and faster on CPU), "autodiff" stores every chunk's intermediates.
  cfg.attention.implementation = "slim"
  cfg.attention.redraw_every = 1000
  return cfg


def _check_keys(section: Any, expected: tuple[str, ...], where: str) -> None:
  if not hasattr(section, "keys"):
    raise ValueError(f"{where} must be a ConfigDict with keys {list(expected)}"
                     f", got {type(section).__name__}")
  got = set(section.keys())
  unknown = sorted(got - set(expected))
  missing = [k for k in expected if k not in got]
  if unknown:
    raise ValueError(f"unknown key(s) {unknown} in {where}; allowed keys are "
                     f"{list(expected)}")
  if missing:
    raise ValueError(f"missing key(s) {missing} in {where}; required keys are "
                     f"{list(expected)}")


def _check_int(value: Any, name: str, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_bool(value: Any, name: str) -> None:
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key of a `model` config section."""
  _check_keys(cfg, _MODEL_KEYS, "model config")
  for name in ("num_layers", "num_heads", "emb_dim", "mlp_dim", "max_len"):
    _check_int(cfg[name], f"model.{name}", 1)
  if cfg.emb_dim % cfg.num_heads:
    raise ValueError(f"model.emb_dim ({cfg.emb_dim}) must be divisible by "
                     f"model.num_heads ({cfg.num_heads})")
  rate = cfg.dropout_rate
  if (isinstance(rate, bool) or not isinstance(rate, (int, float))
      or not 0.0 <= rate < 1.0):
    raise ValueError(f"model.dropout_rate must be a float in [0, 1), got "
                     f"{rate!r}")
  _check_choice(cfg.posemb, "model.posemb", POSEMB_KINDS)
  _check_choice(cfg.dtype, "model.dtype", tuple(DTYPES))
  _check_choice(cfg.param_dtype, "model.param_dtype", tuple(DTYPES))
  _check_bool(cfg.remat, "model.remat")
  _check_bool(cfg.scan_layers, "model.scan_layers")

  att = cfg.attention
  _check_keys(att, _ATTENTION_KEYS, "model.attention config")
  _check_choice(att.kind, "model.attention.kind", ATTENTION_KINDS)
  _check_choice(att.kernel, "model.attention.kernel", FAVOR_KERNELS)
  if att.num_features is not None:
    _check_int(att.num_features, "model.attention.num_features", 0)
  if (att.kind == "favor" and not att.num_features
      and att.kernel != "relu"):
    raise ValueError(
        "model.attention.num_features is 0/None (deterministic features), "
        "which only kernel='relu' supports; got kernel="
        f"{att.kernel!r}. Set num_features > 0 or kernel='relu'.")
  _check_bool(att.orthogonal, "model.attention.orthogonal")
  _check_choice(att.scaling, "model.attention.scaling", SCALINGS)
  _check_int(att.chunk_size, "model.attention.chunk_size", 1)
  _check_choice(att.implementation, "model.attention.implementation",
                IMPLEMENTATIONS)
  _check_int(att.redraw_every, "model.attention.redraw_every", 0)
