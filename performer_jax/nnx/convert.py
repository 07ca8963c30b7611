"""Weights both ways between the Linen and the NNX modules.

NNX state is named as the Linen variables, so a conversion only maps
collections to variable types: "params" <-> nnx.Param, "random_features"
<-> RandomFeatures, "cache" <-> nnx.Cache. This holds for
`MultiHeadAttention` and a model section's `Transformer`, `scan_layers` or
not (`nn.scan`'s stacked "layers" is the layout of the `nnx.vmap` blocks).
Dropout streams (nnx.RngState) are neither read nor written. Usage:
docs/nnx.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
from flax import nnx
from flax import traverse_util

from performer_jax.nnx.attention import RandomFeatures

COLLECTIONS = {"params": nnx.Param, "random_features": RandomFeatures,
               "cache": nnx.Cache}


def to_linen_variables(model: nnx.Module) -> dict[str, dict[str, Any]]:
  """The Linen variables of `model`: `{"params": ..., "random_features":
  ..., "cache": ...}` (the collections it has), as plain nested dicts of
  arrays; `linen_model.apply(variables, ...)` computes what `model` does."""
  variables = {}
  for collection, var_type in COLLECTIONS.items():
    tree = nnx.to_pure_dict(nnx.state(model, var_type))
    if tree:
      variables[collection] = tree
  return variables


def update_from_linen(model: nnx.Module,
                      variables: Mapping[str, Any]) -> None:
  """Sets `model`'s variables to Linen `variables`, in place.

  Args:
    model: an NNX module of this package built with the Linen module's
      arguments (for a Transformer: the same model section, vocab_size and
      causal).
    variables: Linen variables, boxed (`nn.LogicallyPartitioned`) or not;
      any of "params", "random_features" and "cache". A "cache" needs the
      model's `init_cache` first (same batch size and length).

  Raises:
    ValueError: for an unknown collection, a missing or extra variable, or a
      shape or dtype that differs, naming the path.
  """
  for collection, tree in variables.items():
    if collection not in COLLECTIONS:
      raise ValueError(f"unknown Linen collection {collection!r}; this "
                       f"converter maps {sorted(COLLECTIONS)}")
    state = nnx.state(model, COLLECTIONS[collection])
    ours = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    theirs = traverse_util.flatten_dict(nn.unbox(tree))
    _check_match(collection, ours, theirs)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(theirs))
    nnx.update(model, state)


def _check_match(collection: str, ours: dict, theirs: dict) -> None:
  name = lambda path: "/".join(map(str, (collection,) + path))
  missing = sorted(map(name, ours.keys() - theirs.keys()))
  extra = sorted(map(name, theirs.keys() - ours.keys()))
  if missing or extra:
    hint = (" Call the model's init_cache(batch_size, max_len) before "
            "loading a cache." if collection == "cache" else
            " Build the NNX model with the Linen model's arguments (the same "
            "model section, scan_layers included).")
    raise ValueError(f"Linen and NNX variables differ: missing in the Linen "
                     f"variables {missing}, not in the NNX model {extra}."
                     + hint)
  for path, value in theirs.items():
    mine = ours[path]
    if (tuple(value.shape), value.dtype) != (tuple(mine.shape), mine.dtype):
      raise ValueError(f"{name(path)}: the Linen variable is {value.dtype} "
                       f"{tuple(value.shape)}, the NNX model's {mine.dtype} "
                       f"{tuple(mine.shape)}.")
