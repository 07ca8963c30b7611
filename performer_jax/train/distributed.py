"""Multi-process start-up, the device mesh and global batches.

`maybe_initialize` calls `jax.distributed.initialize` when the config or the
environment asks for a multi-process job. Each process then loads only its
rows of the global batch and `global_batch` assembles the global jax.Array
with `jax.make_array_from_process_local_data`; the rows of process p land on
p's devices because the mesh orders devices process by process.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from performer_jax import experiment
from performer_jax.schemas import sections

log = logging.getLogger("performer_jax.train")

MESH_AXES = sections.MeshConfig.AXES


def _int_env(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env.get(name, "1"))
  except ValueError:
    return 1


def multiprocess_env(env: Mapping[str, str]) -> str | None:
  """Names the launcher when `env` describes a multi-process job, else None.

  Recognized: JAX_COORDINATOR_ADDRESS (explicit), SLURM with more than one
  task, Open MPI with more than one rank, and multi-host Cloud TPU slices.
  """
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if env.get("SLURM_JOB_ID") and _int_env(env, "SLURM_NTASKS") > 1:
    return "SLURM"
  if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "Cloud TPU"
  return None


def initialize_kwargs(dist_config: sections.DistributedConfig,
                      env: Mapping[str, str]) -> dict | None:
  """Arguments for jax.distributed.initialize, or None to skip it.

  `initialize` = False never initializes; True always does; "auto" does when
  a coordinator_address is configured or `multiprocess_env(env)` finds a
  launcher. Explicit config values win; missing ones are left to JAX's
  cluster auto-detection (which reads the same environment variables).
  """
  mode = dist_config.mode
  if mode is False:
    return None
  explicit = dist_config.coordinator_address is not None
  if mode == "auto" and not explicit and multiprocess_env(env) is None:
    return None
  kwargs = {}
  if explicit:
    kwargs["coordinator_address"] = dist_config.coordinator_address
  elif env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
  if dist_config.num_processes is not None:
    kwargs["num_processes"] = dist_config.num_processes
  elif env.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if dist_config.process_id is not None:
    kwargs["process_id"] = dist_config.process_id
  elif env.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  return kwargs


def maybe_initialize(dist_config: sections.DistributedConfig,
                     env: Mapping[str, str] | None = None) -> bool:
  """Initializes jax.distributed if asked; returns True if it is running."""
  if jax.distributed.is_initialized():
    return True
  kwargs = initialize_kwargs(dist_config,
                             os.environ if env is None else env)
  if kwargs is None:
    return False
  log.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(config: experiment.ExperimentConfig) -> Mesh:
  """The ("data", "seq", "model") mesh over all devices, -1 sizes
  resolved."""
  shape = experiment.resolve_mesh_shape(
      config, jax.device_count(), jax.local_device_count(),
      jax.process_count())
  # Order devices process by process so each process owns a contiguous block
  # of the "data" axis, matching the rows it loads.
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [B, L]: rows split over "data", positions over "seq",
  replicated over "model"."""
  return NamedSharding(mesh, P("data", "seq"))


def global_batch(local_batch: Mapping[str, np.ndarray],
                 sharding: NamedSharding, global_batch_size: int
                 ) -> dict[str, jax.Array]:
  """Assembles each process's rows into global [global_batch_size, L] arrays."""
  out = {}
  for key, local in local_batch.items():
    shape = (global_batch_size,) + tuple(local.shape[1:])
    out[key] = jax.make_array_from_process_local_data(sharding, local, shape)
  return out
