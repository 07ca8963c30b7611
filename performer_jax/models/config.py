"""The `model` config section: defaults and validation.

`make_model` only accepts a model section that passes `validate_model_config`,
so every typo or bad value fails at construction with a message naming the
key and its allowed values, instead of surfacing as a shape error in jit.
"""

from __future__ import annotations


import jax.numpy as jnp
import ml_collections

from performer_jax import config_checks
from performer_jax.attention import api

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
IMPLEMENTATIONS = api.IMPLEMENTATIONS


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
  # Causal FAVOR+: "auto" runs the compiled kernel on the CPU backend when it
  # is built (python -m performer_jax.kernels.build), else "slim", which
  # recomputes inside each chunk; "autodiff" stores every chunk's
  # intermediates.
  cfg.attention.implementation = "auto"
  cfg.attention.redraw_every = 1000
  return cfg


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key of a `model` config section."""
  config_checks.check_keys(cfg, _MODEL_KEYS, "model config")
  for name in ("num_layers", "num_heads", "emb_dim", "mlp_dim", "max_len"):
    config_checks.check_int(cfg[name], f"model.{name}", 1)
  if cfg.emb_dim % cfg.num_heads:
    raise ValueError(f"model.emb_dim ({cfg.emb_dim}) must be divisible by "
                     f"model.num_heads ({cfg.num_heads})")
  rate = cfg.dropout_rate
  if (isinstance(rate, bool) or not isinstance(rate, (int, float))
      or not 0.0 <= rate < 1.0):
    raise ValueError(f"model.dropout_rate must be a float in [0, 1), got "
                     f"{rate!r}")
  config_checks.check_choice(cfg.posemb, "model.posemb", POSEMB_KINDS)
  config_checks.check_choice(cfg.dtype, "model.dtype", tuple(DTYPES))
  config_checks.check_choice(cfg.param_dtype, "model.param_dtype", tuple(DTYPES))
  config_checks.check_bool(cfg.remat, "model.remat")
  config_checks.check_bool(cfg.scan_layers, "model.scan_layers")

  att = cfg.attention
  config_checks.check_keys(att, _ATTENTION_KEYS, "model.attention config")
  config_checks.check_choice(att.kind, "model.attention.kind", ATTENTION_KINDS)
  config_checks.check_choice(att.kernel, "model.attention.kernel", FAVOR_KERNELS)
  if att.num_features is not None:
    config_checks.check_int(att.num_features, "model.attention.num_features", 0)
  if (att.kind == "favor" and not att.num_features
      and att.kernel != "relu"):
    raise ValueError(
        "model.attention.num_features is 0/None (deterministic features), "
        "which only kernel='relu' supports; got kernel="
        f"{att.kernel!r}. Set num_features > 0 or kernel='relu'.")
  config_checks.check_bool(att.orthogonal, "model.attention.orthogonal")
  config_checks.check_choice(att.scaling, "model.attention.scaling", SCALINGS)
  config_checks.check_int(att.chunk_size, "model.attention.chunk_size", 1)
  config_checks.check_choice(att.implementation, "model.attention.implementation",
                IMPLEMENTATIONS)
  config_checks.check_int(att.redraw_every, "model.attention.redraw_every", 0)
