"""Metric files, progress output and the distributed start-up logic."""

import json
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest

from performer_jax.train import distributed
from performer_jax.train import metrics as metrics_lib


def test_writer_writes_jsonl_and_tensorboard(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(10, "train", {"loss": 1.25, "accuracy": 0.5})
  writer.write(20, "eval", {"loss": float("nan")})
  writer.close()
  records = metrics_lib.read_metrics(str(tmp_path))
  assert records == [{"step": 10, "split": "train", "loss": 1.25,
                      "accuracy": 0.5},
                     {"step": 20, "split": "eval", "loss": "nan"}]
  events = os.listdir(tmp_path / "tb")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  assert os.path.getsize(tmp_path / "tb" / events[0]) > 0
  # Appends on resume instead of truncating.
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(30, "train", {"loss": 1.0})
  writer.close()
  assert len(metrics_lib.read_metrics(str(tmp_path))) == 3


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path / "w"), enabled=False)
  writer.write(1, "train", {"loss": 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / "w")


def test_progress_logs_plain_lines_when_not_a_terminal(caplog):
  progress = metrics_lib.Progress(100, 0, mode="log")
  with caplog.at_level(logging.INFO, logger="performer_jax.train"):
    progress.update(10, {"loss": 2.5, "tokens_per_sec": 1000.0})
  progress.close()
  assert "step 10: loss=2.5 tokens_per_sec=1000" in caplog.text


def dist_config(**overrides):
  config = ml_collections.ConfigDict({
      "initialize": "auto", "coordinator_address": None,
      "num_processes": None, "process_id": None})
  config.update(overrides)
  return config


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
  config = ml_collections.ConfigDict({
      "mesh": {"data": -1, "model": 1},
      "data": {"batch_size": 4},
      "model": {"num_heads": 2, "mlp_dim": 8}})
  mesh = distributed.make_mesh(config)
  assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
  local = {"inputs": np.arange(12, dtype=np.int32).reshape(4, 3)}
  batch = distributed.global_batch(local, distributed.batch_sharding(mesh), 4)
  np.testing.assert_array_equal(np.asarray(batch["inputs"]), local["inputs"])
  assert batch["inputs"].sharding.spec == jax.sharding.PartitionSpec(
      "data", None)
  json.dumps(dict(mesh.shape))  # the trainer logs it


def test_progress_bar_in_tqdm_mode(capsys):
  progress = metrics_lib.Progress(20, 5, mode="tqdm")
  progress.update(10, {"loss": 2.5, "tokens_per_sec": 1000.0})
  progress.message("hello")
  progress.close()
  captured = capsys.readouterr()
  assert "10/20" in captured.err and "loss=2.5000" in captured.err
  assert "tok_s=1000" in captured.err
  assert "hello" in captured.out + captured.err
