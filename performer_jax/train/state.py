"""The training state and its placement on the device mesh.

`TrainState` holds everything a resumed run needs: the step, parameters,
optimizer state, the attention random features (redrawn during training, so
they are state, not constants) and the base rng. The per-step rng is
`fold_in(rng, step)`, so the state never needs a new key after init.

Parameters carry logical axis names (`nn.with_logical_partitioning`); the
model's LOGICAL_AXIS_RULES map them to the ("data", "model") mesh, and the
optimizer state inherits the sharding of the parameter it tracks.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_COLLECTIONS = ("params", "random_features")


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 [] number of optimizer steps taken.
    params: model parameters (unboxed arrays).
    opt_state: optax state for `params`.
    random_features: the model's `random_features` collection (FAVOR
      projections, float32), or {} when the model has none.
    rng: uint32 [2] base key; step t uses `fold_in(rng, t)`.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  random_features: Any
  rng: jax.Array


def axis_rules(rules: Mapping[str, Any] | Sequence[tuple[str, Any]]
               ) -> tuple[tuple[str, Any], ...]:
  """Normalizes LOGICAL_AXIS_RULES (a dict or pairs) to flax's pair form."""
  if isinstance(rules, Mapping):
    return tuple(rules.items())
  return tuple((name, axis) for name, axis in rules)


def init_variables(model: nn.Module, rng: jax.Array, batch_size: int,
                   seq_len: int) -> dict[str, Any]:
  """Initializes the model on a dummy batch; returns boxed variables."""
  params_rng, features_rng, dropout_rng = jax.random.split(rng, 3)
  inputs_BL = jnp.zeros((batch_size, seq_len), jnp.int32)
  key_mask_BL = jnp.ones((batch_size, seq_len), jnp.bool_)
  variables = model.init(
      {"params": params_rng, "random_features": features_rng,
       "dropout": dropout_rng},
      inputs_BL, key_mask_BL=key_mask_BL, deterministic=True)
  extra = sorted(set(variables) - set(_COLLECTIONS))
  if extra:
    raise ValueError(f"the model created variable collections {extra}; the "
                     f"trainer only handles {list(_COLLECTIONS)}")
  return dict(variables)


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation,
                 batch_size: int, seq_len: int
                 ) -> Callable[[jax.Array], TrainState]:
  """Returns init(rng) -> TrainState with unboxed arrays, at step 0."""
  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = nn.meta.unbox(
        init_variables(model, init_rng, batch_size, seq_len))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params),
                      random_features=variables.get("random_features", {}),
                      rng=state_rng)
  return init


def state_shardings(model: nn.Module, tx: optax.GradientTransformation,
                    mesh: Mesh, rules: tuple[tuple[str, Any], ...],
                    batch_size: int, seq_len: int
                    ) -> tuple[TrainState, TrainState]:
  """Returns (abstract state, state of NamedShardings) without allocating."""
  boxed = jax.eval_shape(
      lambda r: init_variables(model, r, batch_size, seq_len),
      jax.random.PRNGKey(0))
  replicated = NamedSharding(mesh, P())
  logical_specs = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  param_shardings = shardings["params"]
  abstract = jax.eval_shape(make_init_fn(model, tx, batch_size, seq_len),
                            jax.random.PRNGKey(0))
  opt_shardings = optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract.opt_state, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))
  features = jax.tree_util.tree_map(lambda _: replicated,
                                    abstract.random_features)
  return abstract, TrainState(
      step=replicated, params=param_shardings, opt_state=opt_shardings,
      random_features=features, rng=replicated)


def num_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
