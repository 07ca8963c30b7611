"""A trained model on disk: a workdir's checkpoint or an exported file.

`read` rebuilds the model from a workdir's `config.json` (the vocabulary
comes from `Task.io`, so no dataset is read) and restores only the
parameters and random features of the newest (or a chosen) orbax
checkpoint. `write_export` writes the same into one msgpack file
(`flax.serialization`) that `read` reads too, without orbax or the workdir:
  {"format": "performer-jax model", "version": 1, "config": <json str>,
   "step": int, "params": {...}, "random_features": {...}}
Users load it with `performer_jax.inference.load`; `init_from` reads here.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from performer_jax import experiment
from performer_jax.tasks import base
from performer_jax.train import checkpoint as checkpoint_lib
from performer_jax.train import workdir as workdir_lib

EXPORT_FORMAT = "performer-jax model"
EXPORT_VERSION = 1
_COLLECTIONS = ("params", "random_features")


class ModelLoadError(ValueError):
  """The path holds no usable model; the message says what to do."""


class SavedModel(NamedTuple):
  """What `read` returns: the Linen model (decode=False) and its variables
  {"params", "random_features"}, the config, the task's io and the step."""
  model: nn.Module
  variables: dict[str, Any]
  config: experiment.ExperimentConfig
  io: base.TaskIO
  step: int


def _abstract_variables(model: nn.Module, seq_len: int) -> dict[str, Any]:
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  rngs = {"params": jax.random.PRNGKey(0),
          "random_features": jax.random.PRNGKey(1)}
  boxed = jax.eval_shape(lambda t: model.init(rngs, t), tokens)
  return {k: v for k, v in nn.meta.unbox(boxed).items() if k in _COLLECTIONS}


def _build(config: experiment.ExperimentConfig):
  io = config.task_spec.io(config.data)
  # Checkpoints have the Linen layout whichever API trained them.
  model = config.build_model(vocab_size=io.vocab_size, causal=io.causal,
                             api="linen")
  return model, io


def _restore_checkpoint(workdir: str, step: int | None, target):
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, every=0)
  try:
    steps = ckpt.all_steps()
  finally:
    ckpt.close()
  if not steps:
    raise ModelLoadError(f"{workdir} has no checkpoint: train first "
                         "(performer-train ... --workdir=" + workdir + ")")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise ModelLoadError(f"{workdir} has no checkpoint of step {step}; it has "
                         f"{sorted(steps)}")
  # orbax reads absolute paths only; the workdir may be given relative.
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step),
                      "default")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=device),
      target)
  try:
    variables = ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(item=target,
                                          restore_args=restore_args,
                                          partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    raise ModelLoadError(f"checkpoint {step} in {workdir} cannot be read: "
                         f"{str(e).splitlines()[0][:300]}") from e
  return variables, step


def read(path: str, step: int | None = None) -> SavedModel:
  """The model and weights of a workdir (newest or `step` checkpoint) or of
  an exported file. Reads no dataset and no optimizer state.

  Raises:
    ModelLoadError: naming what is missing (config, checkpoint, step).
  """
  if os.path.isfile(path):
    if step is not None:
      raise ModelLoadError(f"{path} is an exported model of one step; drop "
                           "the step argument")
    return _load_export(path)
  if not os.path.isdir(path):
    raise ModelLoadError(f"{path} is neither a workdir nor an exported model "
                         "file")
  saved = workdir_lib.read_config(path)
  if saved is None:
    raise ModelLoadError(f"{path} has no config.json: is it a performer-train "
                         "workdir?")
  config = experiment.parse_saved(saved)
  model, io = _build(config)
  target = _abstract_variables(model, config.data.seq_len)
  variables, step = _restore_checkpoint(path, step, target)
  return SavedModel(model, dict(variables), config, io, step)


def write_export(output: str, config: experiment.ExperimentConfig,
                 variables: dict[str, Any], step: int) -> None:
  """Writes a model (its config and "params"/"random_features") into one
  file that `load` reads, atomically (performer_jax.convert uses it too)."""
  payload = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
             "config": json.dumps(config.to_dict()), "step": int(step),
             **{k: jax.device_get(nn.meta.unbox(variables.get(k, {})))
                for k in _COLLECTIONS}}
  tmp = output + ".tmp"
  try:
    with open(tmp, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(payload))
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _load_export(path: str) -> SavedModel:
  try:
    with open(path, "rb") as f:
      payload = flax.serialization.msgpack_restore(f.read())
  except Exception as e:  # pylint: disable=broad-except
    raise ModelLoadError(f"{path} is not a readable exported model: {e}"
                         ) from e
  if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
    raise ModelLoadError(f"{path} is not a {EXPORT_FORMAT} file "
                         "(write one with performer-export)")
  if payload.get("version") != EXPORT_VERSION:
    raise ModelLoadError(f"{path} has export version {payload.get('version')}"
                         f", this performer-jax reads {EXPORT_VERSION}")
  config = experiment.parse_saved(json.loads(payload["config"]))
  model, io = _build(config)
  target = _abstract_variables(model, config.data.seq_len)
  variables = {}
  for name in target:
    variables[name] = flax.serialization.from_state_dict(
        target[name], payload.get(name, {}))
    got = jax.tree_util.tree_map(np.shape, variables[name])
    want = jax.tree_util.tree_map(lambda x: tuple(x.shape), target[name])
    if got != want:
      raise ModelLoadError(f"{path}: the {name} do not match the model its "
                           "config describes; the file is damaged")
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  return SavedModel(model, variables, config, io, int(payload["step"]))
