"""Loading trained models without their data, and exporting them."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import performer_jax
from performer_jax import inference
from performer_jax.inference import cli
from performer_jax.train import checkpoint as checkpoint_lib
from tests.helpers import runs

# One worker builds the runs once for every test of the package.
pytestmark = pytest.mark.xdist_group("inference")


def logits(model, variables, length=12):
  tokens = jnp.arange(length, dtype=jnp.int32)[None] % 20 + 4
  return np.asarray(model.apply(variables, tokens))


def full_state(workdir):
  """The whole saved train state, restored the trainer's way."""
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, every=0)
  try:
    step = ckpt.latest_step()
    path = os.path.join(workdir, "checkpoints", str(step), "default")
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    return ocp.PyTreeCheckpointer().restore(path), step
  finally:
    ckpt.close()


def test_load_restores_the_trained_weights_without_data(tmp_path,
                                                        monkeypatch):
  workdir = runs.trained("protein_lm")
  # The data files named in the config are gone: loading must not read them.
  moved = str(tmp_path / "run")
  shutil.copytree(workdir, moved)
  with open(os.path.join(moved, "config.json")) as f:
    config = json.load(f)
  config["data"]["train_path"] = str(tmp_path / "missing.fasta")
  with open(os.path.join(moved, "config.json"), "w") as f:
    json.dump(config, f)
  # A workdir given relative to the current directory (orbax wants absolute
  # paths: the loader resolves it).
  monkeypatch.chdir(tmp_path)
  loaded = inference.load("run")
  state, step = full_state(workdir)
  assert loaded.step == step == 1
  assert set(loaded.variables) == {"params", "random_features"}
  jax.tree.map(np.testing.assert_array_equal, loaded.variables["params"],
               jax.tree.map(np.asarray, state["params"]))
  assert loaded.io.causal and loaded.io.bos is not None
  again = performer_jax.load_model(moved)
  assert isinstance(again, inference.LoadedModel) and again.step == 1
  np.testing.assert_array_equal(logits(again.model, again.variables),
                                logits(loaded.model, loaded.variables))


def test_export_round_trip_and_cli(tmp_path, capsys):
  workdir = runs.trained("protein_lm")
  out = str(tmp_path / "model.msgpack")
  cli.export_main(["--workdir", workdir, "--output", out])
  assert "wrote step 1" in capsys.readouterr().out
  exported = inference.load(out)
  loaded = inference.load(workdir)
  assert exported.config == loaded.config and exported.step == 1
  jax.tree.map(np.testing.assert_array_equal, exported.variables,
               loaded.variables)
  # No optimizer state in the file: it is about the size of the weights.
  weights = sum(x.nbytes for x in jax.tree.leaves(loaded.variables))
  assert os.path.getsize(out) < 1.2 * weights + 20_000


def test_load_errors_name_the_problem(tmp_path):
  workdir = runs.trained("protein_lm")
  with pytest.raises(inference.ModelLoadError, match="neither a workdir"):
    inference.load(str(tmp_path / "nothing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(inference.ModelLoadError, match="no config.json"):
    inference.load(str(empty))
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), no_ckpt)
  with pytest.raises(inference.ModelLoadError, match="has no checkpoint"):
    inference.load(str(no_ckpt))
  with pytest.raises(inference.ModelLoadError, match="no checkpoint of step 7"):
    inference.load(workdir, step=7)
  junk = tmp_path / "junk.msgpack"
  junk.write_bytes(b"\x00not msgpack")
  with pytest.raises(inference.ModelLoadError, match="exported model"):
    inference.load(str(junk))
  truncated = tmp_path / "cut.msgpack"
  inference.export(workdir, str(truncated))
  truncated.write_bytes(truncated.read_bytes()[:-500])
  with pytest.raises(inference.ModelLoadError):
    inference.load(str(truncated))
