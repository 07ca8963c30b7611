"""Sharded and multi-process training equal a single-device run.

The cases run in fresh subprocesses (XLA_FLAGS must be set before jax is
imported) executing this file as a worker, in parallel with the reference:
  * one process with 8 CPU devices, mesh 8x1x1 (data parallel) and 4x1x2
    (data + model parallel);
  * two processes with 4 CPU devices each, joined by
    jax.distributed.initialize on a free localhost port, mesh 2x2x2 (data
    across the processes; sequence and model parallel inside each), each
    process loading only its half of every batch.
Meshes are DATAxSEQxMODEL.
Their per-step losses and final parameters, and the two-process run's eval
metrics, must match a 1-device run of the same config (computed in the
pytest process) to float32 round-off; every parameter must have moved from
its initial value.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

if __name__ == "__main__":  # a worker: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.helpers import inputs  # pylint: disable=g-import-not-at-top,wrong-import-position

# One worker runs the whole module: its tests share compiled trainers.
pytestmark = pytest.mark.xdist_group("multihost")
STEPS = 4
# Reductions run in a different order when sharded: allow round-off.
ATOL = 2e-5


def make_config(mesh_data, mesh_seq, mesh_model):
  from performer_jax.configs import copy as copy_config  # pylint: disable=g-import-not-at-top
  config = copy_config.get_config("smoke,favor")
  config.model.dropout_rate = 0.1  # the dropout rng must not depend on mesh
  config.model.attention.redraw_every = 2
  config.trainer.steps = STEPS
  config.trainer.eval_every = 0
  config.trainer.checkpoint_every = 0
  config.trainer.log_every = 2  # multi-process: also syncs the SIGTERM flag
  config.trainer.progress = "log"
  config.optimizer.warmup_steps = 1
  config.mesh.data = mesh_data
  config.mesh.seq = mesh_seq
  config.mesh.model = mesh_model
  return config


def gathered(params):
  """{path: the whole array} of a (possibly multi-process) params tree."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  arrays = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if jax.process_count() > 1:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    arrays[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return arrays


def run_and_dump(config, workdir, out_path, save_init=False):
  """Trains; process 0 writes losses and gathered params to out_path (and
  with `save_init` the initial params to out_path + "_init")."""
  import jax  # pylint: disable=g-import-not-at-top
  from performer_jax.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  trainer = trainer_lib.Trainer(config)
  result = trainer.run(workdir)
  arrays = gathered(result.state.params)
  if save_init:
    np.savez(out_path + "_init", **gathered(trainer.init_state().params))
  if jax.process_index() == 0:
    np.savez(out_path, **arrays)
    with open(out_path + ".json", "w") as f:
      json.dump({"losses": [result.train_losses[i] for i in range(STEPS)],
                 "eval": result.eval_metrics,
                 "mesh": dict(trainer.mesh.shape),
                 "processes": jax.process_count(),
                 "cache_size": trainer.train_step._cache_size()}, f)


def worker(argv):
  """python test_multihost.py OUT:DxSxM[,OUT:DxSxM] [PORT PID N].

  Runs each (output, mesh) in turn; with PORT PID N it joins an N-process
  job first.
  """
  for run in argv[0].split(","):
    out, mesh = run.rsplit(":", 1)
    config = make_config(*(int(x) for x in mesh.split("x")))
    if len(argv) == 1:  # eval does not change params: only test it multi-host
      config.data.num_eval_batches = 0
    if len(argv) > 1:
      port, pid, nproc = argv[1:4]
      config.distributed.coordinator_address = f"localhost:{port}"
      config.distributed.process_id = int(pid)
      config.distributed.num_processes = int(nproc)
    # Orbax writes one checkpoint from all processes: the workdir is shared.
    run_and_dump(config, out + "_workdir", out)


def launch(args, num_devices):
  env = inputs.subprocess_env(
      XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
  return subprocess.Popen([sys.executable, os.path.abspath(__file__)]
                          + [str(a) for a in args], env=env, cwd=inputs.REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def wait(proc, timeout=180):
  try:
    output, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    output, _ = proc.communicate()
    pytest.fail(f"worker timed out; output:\n{output[-4000:]}")
  assert proc.returncode == 0, f"worker failed:\n{output[-4000:]}"


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def load(out):
  with open(out + ".json") as f:
    meta = json.load(f)
  with np.load(out + ".npz") as params:
    return meta, dict(params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts all workers, computes the 1-device reference meanwhile."""
  tmp = tmp_path_factory.mktemp("multihost")
  port = free_port()
  procs = [launch([f"{tmp / '8x1x1'}:8x1x1,{tmp / '4x1x2'}:4x1x2"], 8)]
  procs += [launch([f"{tmp / '2proc_2x2x2'}:2x2x2", port, i, 2], 4)
            for i in range(2)]
  try:
    import jax  # pylint: disable=g-import-not-at-top
    assert jax.device_count() == 1, "the reference must run on one device"
    # The reference evaluates too: the two-process eval must equal it.
    run_and_dump(make_config(-1, 1, 1), str(tmp / "ref_workdir"),
                 str(tmp / "ref"), save_init=True)
    for proc in procs:
      wait(proc)
  finally:
    for proc in procs:  # a failed or hung worker must not outlive the test
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  with np.load(str(tmp / "ref_init.npz")) as init:
    init_params = dict(init)
  return {"init": init_params} | {
      name: load(str(tmp / name))
      for name in ["ref", "8x1x1", "4x1x2", "2proc_2x2x2"]}


@pytest.mark.parametrize("name,mesh,processes", [
    ("8x1x1", {"data": 8, "seq": 1, "model": 1}, 1),
    ("4x1x2", {"data": 4, "seq": 1, "model": 2}, 1),
    ("2proc_2x2x2", {"data": 2, "seq": 2, "model": 2}, 2),
])
def test_matches_single_device(runs, name, mesh, processes):
  ref_meta, ref_params = runs["ref"]
  meta, params = runs[name]
  assert meta["mesh"] == mesh and meta["processes"] == processes
  assert meta["cache_size"] == 1
  if processes > 1:  # evaluation over global arrays spanning processes
    assert sorted(meta["eval"]) == sorted(ref_meta["eval"]) != []
    for key, value in ref_meta["eval"].items():
      # An argmax may flip at a float32 tie: one of ~100 eval positions.
      tol = dict(abs=0.02) if key == "accuracy" else dict(rel=ATOL)
      assert meta["eval"][key] == pytest.approx(value, **tol), key
  assert ref_meta["mesh"] == {"data": 1, "seq": 1, "model": 1}
  np.testing.assert_allclose(meta["losses"], ref_meta["losses"], atol=ATOL,
                             rtol=0)
  assert sorted(params) == sorted(ref_params)
  for key in ref_params:
    np.testing.assert_allclose(params[key], ref_params[key], atol=ATOL,
                               rtol=0, err_msg=key)
  # The run must have trained: every parameter moved away from the init.
  init = runs["init"]
  assert sorted(init) == sorted(params)
  for key in init:
    assert np.abs(params[key] - init[key]).max() > 10 * ATOL, key


if __name__ == "__main__":
  worker(sys.argv[1:])
