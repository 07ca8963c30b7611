"""End-to-end training runs on the copy task (tiny models, a few steps).

Trainers are built once per (variant, attention kind) and shared, so each
model compiles once for the whole module.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from performer_jax.train import checkpoint as checkpoint_lib
from performer_jax.train import loop
from performer_jax.train import metrics as metrics_lib
from performer_jax.train import trainer as trainer_lib
from performer_jax.train import workdir as workdir_lib
from tests.helpers import inputs
from tests.helpers import runs
from tests.helpers import reference

# One worker runs the whole module: its tests share compiled trainers.
pytestmark = pytest.mark.xdist_group("train_e2e")
STEPS = runs.COPY_STEPS
small_config = runs.copy_config
get_trainer = runs.copy_trainer


def untimed(workdir):
  """metrics.jsonl without the throughput fields (which are timings)."""
  return [{k: v for k, v in r.items()
           if k not in ("steps_per_sec", "tokens_per_sec", "data_wait")}
          for r in metrics_lib.read_metrics(str(workdir))]


def leaves_close(a, b, atol=0.0):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("variant", ["causal", "mlm"])
@pytest.mark.parametrize("kind", ["softmax", "favor", "l2"])
def test_end_to_end(tmp_path, variant, kind):
  trainer = get_trainer(variant, kind)
  assert trainer.task.causal == (variant == "causal")
  result = trainer.run(str(tmp_path))
  assert result.status == "finished"
  assert sorted(result.train_losses) == list(range(STEPS))
  losses = np.array(list(result.train_losses.values()))
  assert np.all(np.isfinite(losses))
  # A dozen steps at lr 3e-3 must reduce the loss of the copy task.
  assert losses[-4:].mean() < losses[:4].mean()
  assert int(result.state.step) == STEPS
  # Compiled once, even with feature redraws, evals and checkpoints.
  assert trainer.train_step._cache_size() == 1
  assert trainer.eval_step._cache_size() == 1

  records = metrics_lib.read_metrics(str(tmp_path))
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == [3, 6, 9, 12]
  assert [r["step"] for r in evals] == [6, 12]
  for r in train:
    assert {"loss", "accuracy", "perplexity", "bits_per_token",
            "learning_rate", "tokens_per_sec", "steps_per_sec"} <= set(r)
    assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-6)
    assert r["bits_per_token"] == pytest.approx(r["loss"] / np.log(2))
    assert 0.0 <= r["accuracy"] <= 1.0 and r["tokens_per_sec"] > 0
  assert evals[-1]["loss"] == pytest.approx(result.eval_metrics["loss"])
  # The final eval equals a NumPy computation from the model's logits on
  # every eval batch (test_losses.py checks the same on padded batches).
  source = trainer.task.eval
  batches = [source.get_batch(i) for i in range(source.num_batches)]
  variables = {"params": result.state.params}
  if result.state.random_features:
    variables["random_features"] = result.state.random_features
  apply = jax.jit(lambda v, x, m: trainer.model.apply(v, x, key_mask_BL=m))
  want = reference.weighted_metrics(
      [apply(variables, b["inputs"], b["key_mask"]) for b in batches],
      batches)
  assert result.eval_metrics["loss"] == pytest.approx(want["loss"], rel=1e-5)
  # An argmax may flip at a float32 tie: at most one position's weight.
  assert abs(result.eval_metrics["accuracy"] - want["accuracy"]) <= (
      1.0 / want["weight_sum"] + 1e-9)
  assert os.path.exists(tmp_path / "config.json")
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, every=4)
  assert ckpt.all_steps() == [8, 12]  # keep_checkpoints=2
  ckpt.close()

  init = trainer.init_state()
  if kind == "favor":  # redrawn at steps 5 and 10
    assert not np.allclose(
        jax.tree_util.tree_leaves(result.state.random_features)[0],
        jax.tree_util.tree_leaves(init.random_features)[0])
  else:
    assert not jax.tree_util.tree_leaves(init.random_features)


def test_copy_state_is_a_laid_out_copy_that_a_step_may_consume():
  """The divergence probe steps on copy_state's output: train_step donates
  it, and the live state must stay intact and keep its shardings."""
  trainer = get_trainer("causal", "favor")
  state = trainer.init_state()
  copy = trainer.copy_state(state)
  shardings = lambda tree: [x.sharding for x in jax.tree_util.tree_leaves(
      tree)]
  assert shardings(copy) == shardings(state)
  trainer.train_step(copy, trainer.get_batch(trainer.task.train, 0))
  assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
  leaves_close(state, trainer.init_state())


def test_resume_after_sigterm_matches_uninterrupted(tmp_path):
  trainer = get_trainer("causal", "favor")  # redraws every 5 steps
  full = trainer.run(str(tmp_path / "full"))

  def send_sigterm(done):
    if done == 7:
      os.kill(os.getpid(), signal.SIGTERM)

  part = trainer.run(str(tmp_path / "resumed"), on_step=send_sigterm)
  assert part.status == "preempted"
  assert sorted(part.train_losses) == list(range(7))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "resumed"), keep=2,
                                     every=4)
  assert ckpt.latest_step() == 7  # saved on SIGTERM, not at a multiple of 4
  ckpt.close()
  rest = trainer.run(str(tmp_path / "resumed"))
  assert rest.status == "finished"
  assert sorted(rest.train_losses) == list(range(7, STEPS))
  resumed = {**part.train_losses, **rest.train_losses}
  for step in range(STEPS):
    assert resumed[step] == pytest.approx(full.train_losses[step], abs=1e-6)
  leaves_close(rest.state.params, full.state.params, atol=1e-6)
  leaves_close(rest.state.random_features, full.state.random_features)
  # The logged metrics too: step 9's window (7, 9] spans the interruption.
  assert untimed(tmp_path / "resumed") == untimed(tmp_path / "full")

  # A periodic checkpoint (written asynchronously while later steps reused
  # the donated buffers) resumes exactly too.
  shutil.copytree(tmp_path / "full" / "checkpoints",
                  tmp_path / "from8" / "checkpoints")
  shutil.rmtree(tmp_path / "from8" / "checkpoints" / "12")
  from8 = trainer.run(str(tmp_path / "from8"))
  assert sorted(from8.train_losses) == list(range(8, STEPS))
  for step in range(8, STEPS):
    assert from8.train_losses[step] == pytest.approx(
        full.train_losses[step], abs=1e-6)
  assert trainer.train_step._cache_size() == 1


class PoisonedSource:
  """A train source whose batch `bad_step` has NaN weights."""

  def __init__(self, source, bad_step):
    self.source, self.bad_step = source, bad_step
    self.global_batch_size = source.global_batch_size
    self.seq_len = source.seq_len
    self.num_batches = source.num_batches

  def get_batch(self, step):
    batch = self.source.get_batch(step)
    if step == self.bad_step:
      batch["weights"] = np.full_like(batch["weights"], np.nan)
    return batch


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  trainer = get_trainer("mlm", "softmax")
  good_task = trainer.task
  trainer.task = dataclasses.replace(
      good_task, train=PoisonedSource(good_task.train, bad_step=5))
  try:
    with pytest.raises(loop.NonFiniteLossError, match="step 5 gives"):
      trainer.run(str(tmp_path))
  finally:
    trainer.task = good_task
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, every=4)
  assert ckpt.latest_step() == 4  # step 6's state (NaN params) never saved
  restored, _ = ckpt.restore(4, trainer.abstract_state, trainer.shardings)
  ckpt.close()
  assert all(np.all(np.isfinite(x))
             for x in jax.tree_util.tree_leaves(restored.params))
  assert trainer.train_step._cache_size() == 1


def test_cli_trains_and_writes_the_resolved_config(tmp_path):

  workdir = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, "-m", "performer_jax.train",
       "--config=copy:smoke,softmax", "--config.trainer.steps=3",
       "--config.trainer.eval_every=0", "--config.model.emb_dim=16",
       "--config.optimizer.warmup_steps=1",
       f"--workdir={workdir}"],
      cwd=inputs.REPO, env=inputs.subprocess_env(), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "config.json") as f:
    saved = json.load(f)
  assert saved["trainer"]["steps"] == 3
  assert saved["model"]["emb_dim"] == 16
  assert saved["model"]["attention"]["kind"] == "softmax"
  evals = [r for r in metrics_lib.read_metrics(str(workdir))
           if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [3]
  assert "eval at step 3" in proc.stderr


def test_a_state_that_cannot_train_on_is_never_saved(tmp_path):
  """The repro of a diverged run: the state at a save point is finite, but
  the step after it diverges. It must not become "the last good
  checkpoint", or every rerun would resume from it and fail at once."""
  trainer = get_trainer("mlm", "softmax")  # checkpoint_every 4
  good_task = trainer.task
  trainer.task = dataclasses.replace(
      good_task, train=PoisonedSource(good_task.train, bad_step=4))
  try:
    with pytest.raises(loop.NonFiniteLossError,
                       match=r"state after step 4 is not saved.*no "
                       r"checkpoint yet"):
      trainer.run(str(tmp_path))
  finally:
    trainer.task = good_task
  assert not checkpoint_lib.Checkpointer(str(tmp_path), keep=2,
                                         every=4).all_steps()
  # A rerun (here on good data) is not stuck: it trains from scratch.
  assert trainer.run(str(tmp_path)).status == "finished"


@pytest.mark.parametrize("damage", ["truncate", "delete_item", "delete_data"])
def test_corrupt_newest_checkpoint_is_moved_aside(tmp_path, damage):
  trainer = get_trainer("causal", "softmax")
  full = trainer.run(str(tmp_path / "full"))
  workdir = tmp_path / "damaged"
  shutil.copytree(tmp_path / "full", workdir)
  newest = workdir / "checkpoints" / "12"
  if damage == "delete_item":
    shutil.rmtree(newest / "default")
  else:
    data = [p for p in (newest / "default").rglob("*")
            if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:
      if damage == "truncate":
        path.write_bytes(path.read_bytes()[:7])
      else:
        path.unlink()
  # Resume: 12 is moved aside (not deleted), 8 restores, steps 8..11 rerun
  # and reproduce the uninterrupted run.
  result = trainer.run(str(workdir))
  assert result.status == "finished"
  assert sorted(result.train_losses) == list(range(8, STEPS))
  for step in range(8, STEPS):
    assert result.train_losses[step] == pytest.approx(
        full.train_losses[step], abs=1e-6)
  moved = os.listdir(workdir / "checkpoints_corrupt")
  assert len(moved) == 1 and moved[0].startswith("12-")
  assert untimed(workdir) == untimed(tmp_path / "full")


def test_another_runs_workdir_is_refused_before_anything_is_built(tmp_path):
  trainer = get_trainer("causal", "softmax")
  trainer.run(str(tmp_path))
  saved = (tmp_path / "config.json").read_text()
  other = small_config("mlm", "favor")  # another task variant and model
  with pytest.raises(workdir_lib.IncompatibleWorkdirError,
                     match=r"data.variant: 'causal' -> 'mlm'.*"
                     r"model.attention.kind: 'softmax' -> 'favor'"):
    trainer_lib.train_and_evaluate(other, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == saved
  # Overridden on purpose with different shapes: refused by the checkpoint
  # check, and no checkpoint is moved or lost.
  other.model.emb_dim = 16
  other.trainer.allow_config_change = True
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match="other shapes"):
    trainer_lib.Trainer(other).run(str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "8"]
  assert not (tmp_path / "checkpoints_corrupt").exists()
