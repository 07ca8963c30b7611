"""Tests for trainer.init_from (train/warm_start.py): a fresh run starts from
another run's parameters, with its own random features and optimizer."""

import functools
import logging
import os
import tempfile

import jax
import numpy as np
import pytest

from performer_jax import inference
from performer_jax.train import trainer
from performer_jax.train import warm_start
from tests.helpers import runs


def _favor_config(emb_dim=16):
  config = runs.tiny_config("protein_mlm", "favor")
  # A learning rate too small to move a float32 weight (zero-initialized
  # biases move by ~1e-30): the checkpoint after the one step shows what
  # init_from put there.
  config.optimizer.learning_rate = 1e-30
  config.model.emb_dim = emb_dim
  return config


@functools.lru_cache(maxsize=None)
def _softmax_source() -> str:
  """A one-step softmax run with another seed than the FAVOR+ runs, so a
  fresh FAVOR+ initialization differs from it everywhere."""
  config = runs.tiny_config("protein_mlm", "softmax")
  config.trainer.seed = 7
  workdir = os.path.join(tempfile.mkdtemp(prefix="warm-start-"), "softmax")
  trainer.train_and_evaluate(config, workdir)
  return workdir


def test_softmax_weights_start_a_favor_run(tmp_path, caplog):
  source = _softmax_source()
  config = _favor_config()
  config.trainer.init_from = source
  workdir = str(tmp_path / "favor")
  with caplog.at_level(logging.INFO, logger="performer_jax.train"):
    trainer.train_and_evaluate(config, workdir)
  got, want = inference.load(workdir), inference.load(source)
  assert not jax.tree.leaves(want.variables.get("random_features", {}))
  assert jax.tree.leaves(got.variables["random_features"])  # drawn afresh
  got_params = warm_start.by_name(got.variables["params"])
  want_params = warm_start.by_name(want.variables["params"])
  assert got_params.keys() == want_params.keys()
  for name, value in want_params.items():
    np.testing.assert_allclose(got_params[name], value, rtol=1e-6,
                               atol=1e-20, err_msg=name)
  assert "parameters initialized from" in caplog.text
  # A workdir with its own checkpoint resumes it; the log says init_from
  # is ignored.
  caplog.clear()
  config.trainer.steps = 2
  with caplog.at_level(logging.INFO, logger="performer_jax.train"):
    trainer.train_and_evaluate(config, workdir)
  assert "init_from" in caplog.text and "ignored" in caplog.text
  assert inference.load(workdir).step == 2


def test_mismatched_source_names_every_parameter(tmp_path):
  source = _softmax_source()
  config = _favor_config(emb_dim=24)
  config.trainer.init_from = source
  with pytest.raises(ValueError) as info:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(info.value)
  assert "\n" not in message
  assert "init_from" in message and "mismatched parameters" in message
  assert "shape (16," in message and ", 24)" in message
  assert not (tmp_path / "run" / "checkpoints").exists() or not list(
      (tmp_path / "run" / "checkpoints").iterdir())


def test_missing_source_is_a_clear_error(tmp_path):
  config = _favor_config()
  config.trainer.init_from = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="init_from.*nowhere"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_mismatches_lists_missing_extra_and_shapes():
  source = {"a": {"w": np.zeros((2, 3))}, "extra": np.zeros(1)}
  target = {"a": {"w": jax.ShapeDtypeStruct((2, 4), np.float32)},
            "b": jax.ShapeDtypeStruct((1,), np.float32)}
  assert sorted(warm_start.mismatches(source, target)) == [
      "a/w: shape (2, 3) in the source, (2, 4) here",
      "b: missing in the source", "extra: not in this model"]
