"""The command line as a scheduler sees it: exit codes, and runs that are
preempted (SIGTERM), killed (SIGKILL) or diverge, then rerun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from performer_jax.train import cli
from tests.helpers import inputs

pytestmark = pytest.mark.xdist_group("cli")
TIMING = ("steps_per_sec", "tokens_per_sec", "data_wait")
STEPS = 120
ARGS = ["--config=copy:smoke,softmax", f"--config.trainer.steps={STEPS}",
        "--config.trainer.log_every=3", "--config.trainer.eval_every=40",
        "--config.trainer.checkpoint_every=25",
        "--config.optimizer.warmup_steps=1", "--config.trainer.progress=log"]


def start(workdir, *extra):
  env = inputs.subprocess_env(PERFORMER_JAX_TCMALLOC="0")
  return subprocess.Popen(
      [sys.executable, "-m", "performer_jax.train", *ARGS, *extra,
       f"--workdir={workdir}"], cwd=inputs.REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def records(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines()
  # A killed writer may leave a partial last line.
  return [json.loads(line) for line in lines if line.endswith("}")]


def interrupt_after(proc, workdir, step, sig):
  """Sends `sig` once metrics.jsonl has a train record at >= `step`."""
  deadline = time.time() + 180
  while time.time() < deadline and proc.poll() is None:
    if any(r["split"] == "train" and r["step"] >= step
           for r in records(workdir)):
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  return finish(proc)


def untimed(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in records(workdir)]


def test_metrics_and_exit_codes_across_sigterm_and_sigkill(tmp_path):
  full, interrupted = tmp_path / "full", tmp_path / "interrupted"
  code, output = finish(start(full))
  assert code == cli.ExitCode.FINISHED, output[-3000:]
  code, output = interrupt_after(start(interrupted), interrupted, 15,
                                 signal.SIGTERM)
  assert code == cli.ExitCode.PREEMPTED, output[-3000:]
  assert "SIGTERM: saved step" in output
  code, output = interrupt_after(start(interrupted), interrupted, 60,
                                 signal.SIGKILL)
  assert code == -signal.SIGKILL, output[-3000:]
  code, output = finish(start(interrupted))
  assert code == cli.ExitCode.FINISHED, output[-3000:]
  got, want = untimed(interrupted), untimed(full)
  steps = [(r["step"], r["split"]) for r in got]
  assert len(steps) == len(set(steps)), "duplicate metrics records"
  assert got == want


def test_diverged_run_exits_3_and_a_gentler_rerun_recovers(tmp_path):
  workdir = tmp_path / "w"
  diverge = ["--config.optimizer.learning_rate=1e6",
             "--config.trainer.checkpoint_every=2",
             "--config.trainer.steps=30"]
  code, output = finish(start(workdir, *diverge))
  assert code == cli.ExitCode.DIVERGED, output[-3000:]
  assert "training diverged" in output and "Traceback" not in output
  assert (workdir / "error.log").exists()
  code, output = finish(start(workdir, *diverge[1:],
                              "--config.optimizer.learning_rate=1e-4"))
  assert code == cli.ExitCode.FINISHED, output[-3000:]


def test_bad_input_exits_2(tmp_path):
  code, output = finish(start(tmp_path / "w", "--config.model.num_heads=3"))
  assert code == cli.ExitCode.BAD_INPUT
  assert "config.model.emb_dim (32) must be divisible" in output
  assert not (tmp_path / "w").exists()
