"""`trainer.init_from`: start a run's parameters from another run's weights.

The source is a workdir (its newest checkpoint) or a `performer-export`
file, read by `saved_model.read` (parameters and random features only,
never the optimizer). Only `params` are taken: the random features are drawn
afresh, the optimizer and the step start from zero. The attention kind may
differ (a softmax run into FAVOR+ of any kernel: the same weights, FAVOR+
keeps its projection outside `params`); every parameter must match in name
and shape, or the run stops before training with one line listing each
mismatch (nothing is dropped, zero-filled or cast from another shape).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from performer_jax.train import saved_model

# Mismatches named in the error before it says "and N more".
_LISTED = 12


def by_name(tree) -> dict[str, Any]:
  """The leaves of a parameter tree by path ("block_0/attention/kernel")."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatches(source: Any, target: Any) -> list[str]:
  """What keeps `source` params from filling `target`'s (name: why)."""
  src, dst = by_name(source), by_name(target)
  problems = [f"{name}: missing in the source" for name in dst
              if name not in src]
  problems += [f"{name}: not in this model" for name in src
               if name not in dst]
  problems += [f"{name}: shape {tuple(np.shape(src[name]))} in the source, "
               f"{tuple(np.shape(dst[name]))} here"
               for name in dst if name in src
               and tuple(np.shape(src[name])) != tuple(np.shape(dst[name]))]
  return problems


def load_params(init_from: str, abstract_params: Any, shardings: Any) -> Any:
  """The params of `init_from`, laid out as `abstract_params` (shapes and
  dtypes) with `shardings`; ValueError naming every mismatch."""
  try:
    source = saved_model.read(init_from).variables["params"]
  except saved_model.ModelLoadError as e:
    raise ValueError(f"config.trainer.init_from: {e}") from None
  problems = mismatches(source, abstract_params)
  if problems:
    more = len(problems) - _LISTED
    listed = "; ".join(problems[:_LISTED]) + (
        f"; and {more} more" if more > 0 else "")
    raise ValueError(
        f"config.trainer.init_from={init_from!r} does not fit this model "
        f"({len(problems)} mismatched parameters: {listed}). Use a source "
        "trained with the same model sizes and vocabulary.")
  src = by_name(source)

  def place(name, want, sharding):
    host = np.asarray(src[name]).astype(want.dtype)
    # Each process holds the whole array: every device takes its slice.
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])

  names = list(by_name(abstract_params))
  leaves = [place(n, want, sharding) for n, want, sharding in zip(
      names, jax.tree_util.tree_leaves(abstract_params),
      jax.tree_util.tree_leaves(shardings))]
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(abstract_params), leaves)
