"""The whole config: shipped configs parse, cross-section rules, the mesh,
and the command line's errors, all before anything compiles."""

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

from performer_jax import configs
from performer_jax import experiment
from performer_jax import tasks
from performer_jax.configs import copy as copy_config
from performer_jax.configs import options
from performer_jax.schemas import ConfigError
from tests.helpers import inputs


def smoke():
  return copy_config.get_config("smoke")


def test_shipped_copy_configs_parse():
  for arg in ["", "smoke", "smoke,mlm,l2", "softmax", "paper"]:
    cfg = experiment.parse(copy_config.get_config(arg))
    assert cfg.task == "copy"
  assert experiment.parse(copy_config.get_config("smoke,mlm")
                          ).data.variant == "mlm"


def test_every_shipped_config_parses_in_every_variant():
  names = [m.name for m in pkgutil.iter_modules(configs.__path__)]
  checked = []
  for name in names:
    module = importlib.import_module(f"performer_jax.configs.{name}")
    if not hasattr(module, "get_config"):
      continue
    for variant in tasks.VARIANTS:
      cfg = experiment.parse(module.get_config(variant))
      assert cfg.task in tasks.TASKS
      assert isinstance(cfg.data, tasks.TASKS[cfg.task].data)
    checked.append(name)
  assert sorted(checked) == sorted(tasks.TASKS)


def test_parse_is_idempotent_and_serializes():
  cfg = experiment.parse(smoke())
  assert experiment.parse(cfg) is cfg
  again = experiment.parse(cfg.to_dict())
  assert again == cfg


def test_unknown_option():
  with pytest.raises(ValueError, match=r"unknown copy config option.*'fast'"):
    copy_config.get_config("smoke,fast")
  with pytest.raises(ValueError, match="at most one variant"):
    options.parse("cpu,smoke", "text_lm")


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c.__setattr__("extra", 1), r"unknown key config.extra"),
    (lambda c: setattr(c, "task", "nope"), r"config.task='nope'.*copy"),
    (lambda c: setattr(c.data, "batch_size", 0), r"data.batch_size.*>= 1"),
    (lambda c: setattr(c.data, "vocab_size", 3), r"data.vocab_size.*>= 4"),
    (lambda c: setattr(c.model, "num_heads", 3), r"divisible"),
    (lambda c: setattr(c.model, "max_len", 8), r"max_len \(8\).*seq_len"),
    (lambda c: setattr(c.trainer, "microbatches", 3),
     r"batch_size \(8\) must be a multiple of .*microbatches \(3\)"),
    (lambda c: setattr(c.mesh, "data", 3),
     r"batch_size \(8\) must be divisible by the data-parallel mesh size "
     r"\(3\)"),
    (lambda c: setattr(c.mesh, "model", 4),
     r"num_heads \(2\) must be divisible by the model-parallel mesh size"),
    (lambda c: setattr(c, "model_builder", "resnet"), r"model_builder"),
    (lambda c: setattr(c, "model_builder", "invertible_l2"),
     r"needs config.model.attention.kind='l2'"),
    (lambda c: (setattr(c, "model_builder", "invertible_l2"),
                setattr(c.model.attention, "kind", "l2"),
                setattr(c.model, "norm", "post")),
     r"invertible_l2' does not support config.model.norm='post'"),
])
def test_bad_values_are_rejected(mutate, message):
  config = smoke()
  config.unlock()
  mutate(config)
  with pytest.raises(ConfigError, match=message):
    experiment.parse(config)


def test_resolve_mesh_shape():
  cfg = experiment.parse(smoke())  # batch 8, heads 2, mlp 64
  with_mesh = lambda **mesh: experiment.parse(
      {**cfg.to_dict(), "mesh": {"data": -1, "seq": 1, "model": 1, **mesh}})
  resolve = experiment.resolve_mesh_shape
  assert resolve(cfg, 8, 8, 1) == (8, 1, 1)
  assert resolve(with_mesh(data=-1, model=2), 8, 4, 2) == (4, 1, 2)
  assert resolve(with_mesh(data=2, seq=-1), 8, 8, 1) == (2, 4, 1)
  assert resolve(with_mesh(data=-1, seq=2), 8, 4, 2) == (4, 2, 1)
  with pytest.raises(ConfigError, match="inside one process"):
    resolve(with_mesh(data=-1, seq=4), 8, 2, 4)  # 4 > 2 local devices
  with pytest.raises(ConfigError, match=r"seq_len \(16\) must be divisible "
                     r"by the sequence-parallel mesh size config.mesh.seq"):
    experiment.parse({**cfg.to_dict(), "mesh": {"data": -1, "seq": 3, "model": 1},
                      "data": {**cfg.data.to_dict(), "seq_len": 16}})
  with pytest.raises(ConfigError, match="num_heads"):
    resolve(with_mesh(data=2, model=-1), 8, 8, 1)  # model = 4 vs 2 heads
  with pytest.raises(ConfigError, match=r"must equal the number "
                     r"of devices \(8\)"):
    resolve(with_mesh(data=2, model=2), 8, 8, 1)
  with pytest.raises(ConfigError, match="inside one process"):
    resolve(with_mesh(data=-1, model=2), 2, 1, 2)  # spans two processes
  three = experiment.parse({**cfg.to_dict(), "mesh": {"data": 3, "seq": 1, "model": 1},
                            "data": {**cfg.data.to_dict(), "batch_size": 24}})
  with pytest.raises(ConfigError, match="multiple of 3 devices"):
    resolve(three, 8, 8, 1)


def run_cli(*args, cwd=inputs.REPO):
  return subprocess.run([sys.executable, "-m", "performer_jax.train", *args],
                        cwd=cwd, env=inputs.subprocess_env(),
                        capture_output=True, text=True, timeout=120)


def test_cli_rejects_unknown_override_and_bad_value(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_cli("--config=copy:smoke", "--config.trainer.step=3",
                 f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "unknown config key 'step'" in proc.stderr
  assert 'Did you mean "steps"' in proc.stderr
  assert "Traceback" not in proc.stderr
  # A path to a config file works as well as a name.
  proc = run_cli("--config=configs/copy.py:smoke",
                 "--config.optimizer.schedule=linear", f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "bad config: config.optimizer.schedule must be one of" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_cli_reports_missing_config(tmp_path):
  for spec in ("configs/no_such_task.py", "no_such_task:smoke"):
    proc = run_cli(f"--config={spec}", f"--workdir={tmp_path}",
                   cwd=str(tmp_path))
    assert proc.returncode == 2
    assert f"--config={spec}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no_such_task" in proc.stderr


def test_saved_configs_of_older_versions_take_new_defaults():
  saved = experiment.parse(smoke()).to_dict()
  del saved["mesh"]["seq"], saved["model_api"]
  with pytest.raises(ConfigError, match="missing key config"):
    experiment.parse(saved)
  config = experiment.parse_saved(saved)
  assert config.mesh.seq == 1 and config.model_api == "linen"
  assert config.to_dict() == experiment.parse(smoke()).to_dict()
  saved["model"]["num_layers"] = 0  # the rules still hold
  with pytest.raises(ConfigError, match="num_layers"):
    experiment.parse_saved(saved)
  with pytest.raises(ConfigError, match="names task 'resnet'"):
    experiment.parse_saved({**saved, "task": "resnet"})
