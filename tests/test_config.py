"""Config validation: bad keys and values fail before anything compiles."""

import os
import subprocess
import sys

import pytest

from configs import common
from configs import copy as copy_config
from performer_jax.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke():
  return copy_config.get_config("smoke")


def test_shipped_configs_validate():
  for arg in ["", "smoke", "smoke,mlm,l2", "softmax"]:
    config_lib.validate_config(copy_config.get_config(arg))


def test_every_task_config_validates_in_smoke_mode():
  import importlib  # pylint: disable=g-import-not-at-top
  names = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
                 if f.endswith(".py") and not f.startswith("_"))
  checked = []
  for name in names:
    module = importlib.import_module(f"configs.{name}")
    if hasattr(module, "get_config"):
      config = module.get_config("smoke")
      config_lib.validate_config(config)
      assert config.task in config_lib.all_tasks()
      checked.append(name)
  assert "copy" in checked


def test_base_config_has_paper_defaults():
  config = common.get_base_config()
  opt = config.optimizer
  assert (opt.learning_rate, opt.b1, opt.b2, opt.eps) == (1e-3, 0.9, 0.98,
                                                          1e-9)
  assert (opt.grad_clip_norm, opt.weight_decay) == (0.5, 0.1)
  assert config.model.dropout_rate == 0.1


def test_unknown_copy_option():
  with pytest.raises(ValueError, match=r"unknown copy config option.*'fast'"):
    copy_config.get_config("smoke,fast")


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c.__setattr__("extra", 1), r"unknown key\(s\) \['extra'\]"),
    (lambda c: setattr(c, "task", "nope"), r"config.task='nope'.*copy"),
    (lambda c: setattr(c.data, "batch_size", 0), r"data.batch_size.*>= 1"),
    (lambda c: setattr(c.model, "num_heads", 3), r"divisible"),
    (lambda c: setattr(c.model.attention, "kind", "linear"),
     r"model.attention.kind.*\['softmax', 'favor', 'l2'\]"),
    (lambda c: setattr(c.model, "max_len", 8), r"max_len \(8\).*seq_len"),
    (lambda c: setattr(c.optimizer, "name", "sgd"),
     r"optimizer.name.*\['adam', 'adamw'\].*'sgd'"),
    (lambda c: setattr(c.optimizer, "schedule", "linear"),
     r"optimizer.schedule"),
    (lambda c: setattr(c.optimizer, "learning_rate", -1.0),
     r"optimizer.learning_rate must be a number in \(0"),
    (lambda c: setattr(c.optimizer, "b2", 1.0), r"optimizer.b2"),
    (lambda c: setattr(c.optimizer, "warmup_steps", 50),
     r"warmup_steps \(50\) must be < .*steps \(20\)"),
    (lambda c: setattr(c.trainer, "steps", 0), r"trainer.steps.*>= 1"),
    (lambda c: setattr(c.trainer, "log_every", 0), r"trainer.log_every"),
    (lambda c: setattr(c.trainer, "keep_checkpoints", 0),
     r"trainer.keep_checkpoints"),
    (lambda c: setattr(c.trainer, "progress", "bar"), r"trainer.progress"),
    (lambda c: setattr(c.trainer, "microbatches", 0),
     r"trainer.microbatches.*>= 1"),
    (lambda c: setattr(c.trainer, "microbatches", 3),
     r"batch_size \(8\) must be a multiple of .*microbatches \(3\)"),
    (lambda c: setattr(c.mesh, "data", 3),
     r"batch_size \(8\) must be divisible by the data-parallel mesh size \(3\)"),
    (lambda c: setattr(c.mesh, "model", 4),
     r"num_heads \(2\) must be divisible by the model-parallel mesh size"),
    (lambda c: setattr(c.mesh, "data", 0), r"mesh.data"),
    (lambda c: c.mesh.update(data=-1, model=-1), r"at most one"),
    (lambda c: setattr(c.distributed, "initialize", "maybe"),
     r"distributed.initialize must be 'auto', True or False"),
    (lambda c: c.distributed.update(num_processes=2, process_id=2),
     r"process_id \(2\) must be < .*num_processes \(2\)"),
])
def test_bad_values_are_rejected(mutate, message):
  config = smoke()
  config.unlock()
  mutate(config)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config)


def test_unknown_model_key_is_rejected():
  config = smoke()
  config.model.attention.feature_count = 3
  with pytest.raises(config_lib.ConfigError, match="feature_count"):
    config_lib.validate_config(config)


def test_resolve_mesh_shape():
  config = smoke()  # batch 8, heads 2, mlp 64
  resolve = config_lib.resolve_mesh_shape
  assert resolve(config, 8, 8, 1) == (8, 1)
  config.mesh.model = 2
  assert resolve(config, 8, 4, 2) == (4, 2)
  config.mesh.update(data=2, model=-1)
  with pytest.raises(config_lib.ConfigError, match="num_heads"):
    resolve(config, 8, 8, 1)  # model = 4 does not divide 2 heads
  config.mesh.update(data=2, model=2)
  with pytest.raises(config_lib.ConfigError, match=r"must equal the number "
                     r"of devices \(8\)"):
    resolve(config, 8, 8, 1)
  config.mesh.update(data=-1, model=2)
  with pytest.raises(config_lib.ConfigError, match="stays inside one process"):
    resolve(config, 2, 1, 2)  # model axis would span two processes
  config.mesh.update(data=3, model=1)
  with pytest.raises(config_lib.ConfigError, match="multiple of 3 devices"):
    resolve(config, 8, 8, 1)


def test_initialize_parsing():
  assert config_lib.parse_initialize("auto") == "auto"
  assert config_lib.parse_initialize("True") is True
  assert config_lib.parse_initialize(False) is False
  with pytest.raises(config_lib.ConfigError):
    config_lib.parse_initialize(1)


def run_cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "performer_jax.train", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)


def test_cli_rejects_unknown_override_and_bad_value(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_cli("--config=configs/copy.py:smoke", "--config.trainer.step=3",
                 f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "unknown config key 'step'" in proc.stderr
  assert 'Did you mean "steps"' in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = run_cli("--config=configs/copy.py:smoke",
                 "--config.optimizer.schedule=linear", f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "bad config: config.optimizer.schedule must be one of" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_cli_reports_missing_config_file(tmp_path):
  proc = run_cli("--config=configs/no_such_task.py",
                 f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "could not load the --config file" in proc.stderr
  assert "no_such_task.py" in proc.stderr
