"""Logical axis names and how they shard, for the Linen and NNX modules.

Every weight carries logical axis names ("embed", "heads", "kv", "mlp", ...).
`LOGICAL_AXIS_RULES` maps them to the ("data", "seq", "model") mesh; with a
mesh and the rules set they shard eagerly, otherwise they stay metadata.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
from flax import nnx
import jax

# Logical axis names -> mesh axes. Model parallelism splits attention heads
# and the MLP hidden units; data parallelism splits the batch; everything
# else is replicated.
LOGICAL_AXIS_RULES = (
    ("batch", "data"),
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", None),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def shard_eagerly() -> bool:
  """Whether a new variable is placed on the mesh as it is created.

  Only when a mesh is set (`jax.set_mesh`) and logical axis rules are active
  (`nn.logical_axis_rules`): the rules are what turns the logical names into
  mesh axes. Without either, the names stay metadata (read them with
  `nnx.get_partition_spec` or `nn.get_partition_spec`), so building a model
  needs no mesh and no global flag. `nnx.use_eager_sharding(False)` still
  turns it off.
  """
  return (nnx.using_eager_sharding()
          and not jax.sharding.get_abstract_mesh().empty
          and bool(nn.get_logical_axis_rules()))


def nnx_sharding(axes: tuple[str | None, ...]) -> dict[str, Any]:
  """The metadata of an NNX variable with logical axis names `axes`."""
  return {"out_sharding": tuple(axes), "eager_sharding": shard_eagerly()}


class LogicallyPartitioned(nn.LogicallyPartitioned):
  """`nn.LogicallyPartitioned` that `nnx.bridge.ToNNX` can convert anywhere.

  In Linen it is the same box. Converted to an NNX variable it asks for eager
  sharding only where `shard_eagerly` allows it, so a bridged Linen module
  initializes without a mesh as well as on one.
  """

  def to_nnx_metadata(self) -> dict[str, Any]:
    metadata = super().to_nnx_metadata()
    metadata["eager_sharding"] = shard_eagerly()
    return metadata


def logical_init(init: Callable, axes: tuple[str | None, ...]) -> Callable:
  """Like `nn.with_logical_partitioning(init, axes)`, with the box above."""
  def boxed(*args, **kwargs):
    return LogicallyPartitioned(init(*args, **kwargs), tuple(axes))
  return boxed


def product_sharding(x: jax.Array, kernel: jax.Array,
                     contract: int) -> jax.sharding.PartitionSpec | None:
  """Under a mesh of explicit axes, the sharding of `x @ kernel` (x's last
  `contract` axes against the kernel's first): x's leading axes, then the
  kernel's output axes, as JAX would pick on an automatic mesh. A sharded
  contraction (heads, mlp) is then all-reduced instead of refused. None
  (let JAX infer) anywhere else."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not mesh.are_all_axes_explicit:
    return None
  def spec(a):
    names = tuple(jax.typeof(a).sharding.spec)
    return names + (None,) * (a.ndim - len(names))
  return jax.sharding.PartitionSpec(*spec(x)[:x.ndim - contract],
                                    *spec(kernel)[contract:])
