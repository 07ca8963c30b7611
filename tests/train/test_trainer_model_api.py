"""`config.model_api = "nnx"`: the trainer trains the NNX model, step for
step as it trains the Linen one, into checkpoints either API resumes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax import inference
from performer_jax.configs import copy as copy_config
from performer_jax.nnx import functional
from performer_jax.schemas.base import ConfigError
from performer_jax.train import trainer as trainer_lib

pytestmark = pytest.mark.xdist_group("model_api")
STEPS = 3


def config_for(api, kind="favor", mlm=False, dropout=0.0):
  config = copy_config.get_config("smoke," + kind + (",mlm" if mlm else ""))
  config.model_api = api
  config.model.dropout_rate = dropout
  config.model.attention.redraw_every = 2  # a redraw inside the steps
  config.trainer.steps = STEPS
  config.trainer.eval_every = 0
  config.trainer.progress = "log"
  config.optimizer.warmup_steps = 0
  return config


def copy_tree(tree):
  return jax.tree.map(jnp.copy, tree)


@pytest.mark.parametrize("kind,mlm", [("favor", False), ("l2", True)])
def test_nnx_trains_as_linen_from_the_same_weights(kind, mlm):
  linen = trainer_lib.Trainer(config_for("linen", kind, mlm))
  nnx_ = trainer_lib.Trainer(config_for("nnx", kind, mlm))
  assert isinstance(nnx_.model, functional.FunctionalTransformer)
  # Same variable tree, shapes and shardings: checkpoints are interchangeable.
  assert (jax.tree.structure(linen.abstract_state)
          == jax.tree.structure(nnx_.abstract_state))
  assert jax.tree.map(lambda s: s.shape, linen.abstract_state) == (
      jax.tree.map(lambda s: s.shape, nnx_.abstract_state))
  assert jax.tree.leaves(linen.shardings) == jax.tree.leaves(nnx_.shardings)
  start = linen.init_state()
  states = {"linen": copy_tree(start), "nnx": copy_tree(start)}
  for step in range(STEPS):
    batch = linen.get_batch(linen.task.train, step)
    out = {}
    for api, trainer in (("linen", linen), ("nnx", nnx_)):
      with trainer.context():
        states[api], metrics = trainer.train_step(states[api], batch)
      out[api] = jax.device_get(metrics)
    # float32 sums over a few hundred tokens, summed in another order.
    np.testing.assert_allclose(out["nnx"]["loss_sum"],
                               out["linen"]["loss_sum"], rtol=1e-5)
    np.testing.assert_allclose(out["nnx"]["grad_norm"],
                               out["linen"]["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(states["linen"]),
                  jax.tree.leaves(states["nnx"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)
  with nnx_.context():
    sums = nnx_.eval_step(states["nnx"], linen.get_batch(linen.task.eval, 0))
  with linen.context():
    ref = linen.eval_step(states["linen"], linen.get_batch(linen.task.eval, 0))
  np.testing.assert_allclose(sums["loss_sum"], ref["loss_sum"], rtol=1e-4)


def test_nnx_run_checkpoints_resume_with_linen_and_load(tmp_path):
  workdir = str(tmp_path / "run")
  config = config_for("nnx", dropout=0.1)  # the dropout rng path too
  result = trainer_lib.train_and_evaluate(config, workdir)
  assert result.status == "finished"
  assert sorted(result.train_losses) == list(range(STEPS))
  assert np.isfinite(list(result.train_losses.values())).all()
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model_api"] == "nnx"
  resumed = config_for("linen", dropout=0.1)
  resumed.trainer.steps = STEPS + 1
  result = trainer_lib.train_and_evaluate(resumed, workdir)
  assert list(result.train_losses) == [STEPS]
  assert int(result.state.step) == STEPS + 1
  loaded = inference.load(workdir)
  assert loaded.step == STEPS + 1
  tokens = jnp.zeros((1, 8), jnp.int32)
  assert np.isfinite(np.asarray(loaded.model.apply(loaded.variables,
                                                   tokens))).all()


def test_model_api_errors(tmp_path):
  bad = config_for("jax")
  with pytest.raises(ConfigError, match="model_api"):
    trainer_lib.train_and_evaluate(bad, str(tmp_path / "never"))
  bad = config_for("nnx", kind="l2")
  bad.model_builder = "invertible_l2"
  bad.model.attention.kind = "l2"
  with pytest.raises(ConfigError, match="model_api='linen'"):
    trainer_lib.train_and_evaluate(bad, str(tmp_path / "never"))
  assert not (tmp_path / "never").exists()
  with pytest.raises(ValueError, match="does not decode"):
    functional.make_model(config_for("nnx").model, vocab_size=8, causal=True,
                          decode=True)
  model = functional.make_model(config_for("nnx").model, vocab_size=8,
                                causal=True)
  variables = model.init({"params": jax.random.PRNGKey(0)},
                         jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="rngs={'dropout'"):
    model.apply(variables, jnp.zeros((1, 4), jnp.int32), deterministic=False)
