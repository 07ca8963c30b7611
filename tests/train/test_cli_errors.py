"""performer-train's bad-input errors, in process: exit 2 with a short
message and no traceback, naming what to type instead; and a trial run of
a config made for thousands of steps (`--config.trainer.steps=3`)."""

import json
import os
import subprocess
import sys

import pytest

from performer_jax import experiment
from performer_jax.train import cli
from tests.helpers import inputs

pytestmark = pytest.mark.xdist_group("cli")
TASKS = ("copy", "pixel_lm", "protein_lm", "protein_mlm", "text_lm")


def bad_input(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["performer-train", *argv])
  assert exit_info.value.code == cli.ExitCode.BAD_INPUT
  err = capsys.readouterr().err
  assert "Traceback" not in err and "__main__" not in err, err
  return err


@pytest.mark.parametrize("spec, message", [
    ("protein_mlm:smok", "unknown protein_mlm config option(s) ['smok']"),
    ("protein_mlm:smoke,favour", "option(s) ['favour']"),
    ("nonexistent", "choose from ['copy', 'pixel_lm', 'protein_lm', "
                    "'protein_mlm', 'sentence_embedding', 'text_lm']"),
    ("no/such/config.py", "the config file no/such/config.py does not exist"),
])
def test_bad_config_names_say_what_exists(spec, message, tmp_path, capsys):
  err = bad_input([f"--config={spec}", f"--workdir={tmp_path}/w"], capsys)
  assert message in err
  assert "Usage: performer-train" in err or "nonexistent" in err or (
      "no/such" in err)


def test_a_workdir_that_is_a_file_is_bad_input(tmp_path, capsys):
  afile = tmp_path / "afile"
  afile.write_text("")
  err = bad_input(["--config=copy:smoke", f"--workdir={afile}"], capsys)
  assert err.strip() == (f"error: --workdir={afile} is a file; give a "
                         "directory (it is created if missing)")
  err = bad_input(["--config=copy:smoke", f"--workdir={afile}/run"], capsys)
  assert f"{afile} is a file" in err


@pytest.mark.parametrize("task", TASKS)
def test_every_task_config_takes_three_steps(task):
  """The cpu variants' 100-step warmups fit a 3-step run (the schedule caps
  it: tests/train/test_optimizer.py)."""
  from performer_jax import configs  # pylint: disable=g-import-not-at-top
  module = __import__(f"{configs.__name__}.{task}", fromlist=["get_config"])
  for variant in ("cpu", "paper"):
    config = module.get_config(variant)
    config.trainer.steps = 3
    assert experiment.parse(config).trainer.steps == 3


def test_a_three_step_trial_run_logs_the_warmup_cap(tmp_path):
  """A real process (absl's flags are parsed once per process)."""
  workdir = str(tmp_path / "w")
  result = subprocess.run(
      [sys.executable, "-m", "performer_jax.train", "--config=copy:smoke",
       "--config.optimizer.warmup_steps=100", "--config.trainer.steps=3",
       "--config.trainer.progress=log", f"--workdir={workdir}"],
      cwd=inputs.REPO, env=inputs.subprocess_env(PERFORMER_JAX_TCMALLOC="0"),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "warmup: 2 steps instead of optimizer.warmup_steps=100" in (
      result.stderr + result.stdout)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert max(steps) == 3
