"""The distributed start-up logic, the mesh and global batches."""

import json

import jax
import numpy as np
import pytest

from performer_jax import experiment
from performer_jax.configs import copy as copy_config
from performer_jax.schemas import DistributedConfig
from performer_jax.train import distributed


def dist_config(**overrides):
  return DistributedConfig(**overrides)


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "Cloud TPU"),
    ({"TPU_WORKER_HOSTNAMES": "a"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_COORDINATOR_ADDRESS"),
])
def test_multiprocess_env(env, expected):
  assert distributed.multiprocess_env(env) == expected


def test_initialize_kwargs():
  kwargs = distributed.initialize_kwargs
  assert kwargs(dist_config(), {}) is None
  assert kwargs(dist_config(initialize="false"),
                {"JAX_COORDINATOR_ADDRESS": "h:1"}) is None
  # Forced on with nothing configured: leave it to JAX's auto-detection.
  assert kwargs(dist_config(initialize="true"), {}) == {}
  assert kwargs(dist_config(), {"SLURM_JOB_ID": "7",
                                "SLURM_NTASKS": "2"}) == {}
  assert kwargs(dist_config(), {"JAX_COORDINATOR_ADDRESS": "h:1",
                                "JAX_NUM_PROCESSES": "2",
                                "JAX_PROCESS_ID": "1"}) == {
                                    "coordinator_address": "h:1",
                                    "num_processes": 2, "process_id": 1}
  explicit = dist_config(coordinator_address="c:9", num_processes=4,
                         process_id=3)
  assert kwargs(explicit, {"JAX_COORDINATOR_ADDRESS": "h:1"}) == {
      "coordinator_address": "c:9", "num_processes": 4, "process_id": 3}


def test_maybe_initialize_single_process_is_a_no_op():
  assert not distributed.maybe_initialize(dist_config(), env={})
  assert jax.process_count() == 1


def test_global_batch_on_one_device():
  config = experiment.parse(copy_config.get_config("smoke"))
  mesh = distributed.make_mesh(config)
  assert dict(mesh.shape) == {"data": jax.device_count(), "seq": 1, "model": 1}
  local = {"inputs": np.arange(12, dtype=np.int32).reshape(4, 3)}
  batch = distributed.global_batch(local, distributed.batch_sharding(mesh), 4)
  np.testing.assert_array_equal(np.asarray(batch["inputs"]), local["inputs"])
  assert batch["inputs"].sharding.spec == jax.sharding.PartitionSpec(
      "data", "seq")
  json.dumps(dict(mesh.shape))  # the trainer logs it
