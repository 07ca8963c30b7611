"""A multi-process job whose peer dies: the survivor leaves at once.

Two real processes join through jax.distributed on localhost and run one
collective; then process 1 dies abruptly (os._exit, as a preempted or
OOM-killed host would) and process 0's next collective fails. That failure
takes the command line's exit path (`cli.report`, `cli.leave`): one short
message naming the remedy, and exit code 1 within seconds. Without `leave`,
the exit handler of jax.distributed waits for the dead peer at its shutdown
barrier and aborts (exit 134) only after the heartbeat timeout.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

if __name__ == "__main__":  # a worker: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from performer_jax.train import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import inputs  # pylint: disable=g-import-not-at-top,wrong-import-position

PEER_EXIT = 9


def worker(port: int, process_id: int) -> None:
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  # pylint: enable=g-import-not-at-top
  jax.distributed.initialize(f"localhost:{port}", 2, process_id)
  mesh = jax.sharding.Mesh(jax.devices(), ("data",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  # A cross-process reduction, read back as the trainer reads its metrics.
  reduce = lambda: float(total(jax.make_array_from_process_local_data(
      rows, np.ones((1,), np.float32))))
  assert reduce() == 2.0  # both alive: connected
  if process_id == 1:
    sys.stdout.flush()
    os._exit(PEER_EXIT)  # pylint: disable=protected-access
  time.sleep(1.0)  # the peer is gone by now
  try:
    reduce()
  except Exception as e:  # pylint: disable=broad-except
    cli.report(e, None)
    cli.leave(cli.exit_code(e))
  print("the collective succeeded without the peer", file=sys.stderr)
  sys.exit(0)


def test_a_dead_peer_stops_the_survivor_at_once_with_a_clear_message():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = inputs.subprocess_env(JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(port), str(i)],
      cwd=inputs.REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      # Far below the 100 s heartbeat timeout an aborting survivor waits.
      outputs.append(proc.communicate(timeout=60)[0])
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    pytest.fail("a process did not exit within 60 s of its peer's death:\n"
                + "\n".join(p.communicate()[0][-3000:] for p in procs))
  assert procs[1].returncode == PEER_EXIT, outputs[1][-3000:]
  assert procs[0].returncode == 1, outputs[0][-3000:]
  assert "error: " in outputs[0]
  assert "one of 2 processes" in outputs[0]
  assert "Rerun every process" in outputs[0]


@pytest.mark.parametrize("error, code", [
    (ValueError("UNKNOWN: Gloo all-reduce failed: connection closed"), 1),
    (ValueError("RESOURCE_EXHAUSTED: out of memory allocating 4 GiB"), 1),
    (ValueError("config.data.seq_len must be > 0"), 2),
    (FileNotFoundError("/data/missing.fasta"), 2),
    (RuntimeError("anything else"), 1),
])
def test_runtime_failures_are_not_reported_as_bad_input(error, code):
  """JAX raises some runtime failures as a ValueError carrying the status:
  they must not exit 2 ("fix your input"), which wrappers do not retry."""
  assert cli.exit_code(error) == code


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]))
