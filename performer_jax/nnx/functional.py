"""The NNX Transformer driven through Linen's functional `init`/`apply`.

`FunctionalTransformer` gives the trainer, which works on pure pytrees, the
NNX model (`config.model_api = "nnx"`) through a Linen module's `init` and
`apply`. `apply` builds the model inside the traced function and loads
`variables` into it; under `jax.jit` the throwaway initial values are dead
code. The variables are the Linen layout (nnx/convert.py), boxed with the
logical axis names, so a checkpoint does not depend on the API that trained
it: either API resumes it, and `performer_jax.load_model`, the Linen
decoders and `pnnx.update_from_linen` read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
from flax import nnx
from flax import traverse_util
import jax

from performer_jax.core import transformer as core
from performer_jax.nnx import convert
from performer_jax.nnx import transformer
from performer_jax.schemas.sections import ModelConfig

# Collections a training state holds (no cache: the trainer never decodes).
_TRAINED = ("params", "random_features")


def _boxed(model: nnx.Module, var_type: type[nnx.Variable]) -> dict:
  """The `var_type` state of `model` as a nested dict, each array boxed in
  `nn.LogicallyPartitioned` with its variable's logical axis names."""
  flat = {}
  for path, var in nnx.to_flat_state(nnx.state(model, var_type)):
    names = var.get_metadata().get("out_sharding")
    value = var.get_value()
    flat[path] = (nn.LogicallyPartitioned(value, tuple(names))
                  if names else value)
  return traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class FunctionalTransformer:
  """`init`/`apply` of the NNX `Transformer` on Linen-layout variables.

  Attributes:
    config: the model section.
    vocab_size: number of token ids.
    causal: decoder-only if True, else the masked-LM encoder.
  """
  config: ModelConfig
  vocab_size: int
  causal: bool

  def _build(self, rngs: nnx.Rngs) -> transformer.Transformer:
    return transformer.make_model(self.config, vocab_size=self.vocab_size,
                                  causal=self.causal, rngs=rngs)

  def init(self, rngs: Mapping[str, jax.Array], inputs_BL: jax.Array, *,
           key_mask_BL: jax.Array | None = None,
           deterministic: bool = True) -> dict[str, Any]:
    """Fresh variables `{"params": ..., "random_features": ...}` (boxed).

    Args:
      rngs: "params" (required), "random_features" and "dropout" keys.
      inputs_BL: int [B, L] example tokens; the forward pass runs on them,
        so a bad shape fails here as in Linen.
      key_mask_BL: optional bool [B, L].
      deterministic: whether dropout is off in that forward pass.
    """
    if "params" not in rngs:
      raise ValueError(f"init needs a 'params' rng, got {sorted(rngs)}")
    model = self._build(nnx.Rngs(
        params=rngs["params"],
        random_features=rngs.get("random_features", rngs["params"]),
        dropout=rngs.get("dropout", rngs["params"])))
    model(inputs_BL, key_mask_BL=key_mask_BL, deterministic=deterministic)
    return {collection: tree for collection, tree in (
        (c, _boxed(model, convert.COLLECTIONS[c])) for c in _TRAINED)
            if tree}

  def apply(self, variables: Mapping[str, Any], inputs_BL: jax.Array, *,
            key_mask_BL: jax.Array | None = None,
            deterministic: bool = True,
            rngs: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """float32 [B, L, vocab_size] logits of the NNX model with `variables`.

    Args:
      variables: "params" and (FAVOR+ with a projection) "random_features",
        boxed or not.
      inputs_BL: int32 [B, L] token ids.
      key_mask_BL: optional bool [B, L], True at real tokens.
      deterministic: False turns dropout on; it then needs rngs["dropout"].
      rngs: {"dropout": key} for training.
    """
    extra = sorted(set(variables) - set(_TRAINED))
    if extra:
      raise ValueError(f"FunctionalTransformer.apply takes the collections "
                       f"{list(_TRAINED)}, got {extra}; decode with "
                       "performer_jax.linen or pnnx.Transformer instead")
    if not deterministic and not (rngs and "dropout" in rngs):
      raise ValueError("apply(..., deterministic=False) needs "
                       "rngs={'dropout': key}")
    dropout = rngs["dropout"] if rngs and "dropout" in rngs else (
        jax.random.PRNGKey(0))
    # A model is built per call, not kept between steps: the trainer's step
    # is a pure function of pytrees, jitted once, so this runs only while
    # tracing (once per compiled step), and the initial values drawn here
    # are overwritten below, dead code that XLA removes. A kept model would
    # be mutable state outside the jitted function.
    model = self._build(nnx.Rngs(params=0, dropout=dropout))
    convert.update_from_linen(model, variables)
    return model(inputs_BL, key_mask_BL=key_mask_BL,
                 deterministic=deterministic)


def make_model(model: ModelConfig | Any, *, vocab_size: int, causal: bool,
               decode: bool = False) -> FunctionalTransformer:
  """The builder of `config.model_api = "nnx"`: `linen.make_model`'s
  signature, returning a `FunctionalTransformer` (no decoding: decode the
  trained variables with `performer_jax.linen` or `pnnx.Transformer`)."""
  if decode:
    raise ValueError("the functional NNX model does not decode; load the "
                     "variables into pnnx.make_model(..., decode=True) "
                     "(pnnx.update_from_linen) or use performer_jax.linen")
  model = core.parse_model_args(
      model, vocab_size=vocab_size, causal=causal, decode=False)
  return FunctionalTransformer(model, int(vocab_size), bool(causal))
