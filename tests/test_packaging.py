"""The wheel is complete: installed (not editable) into a fresh virtual
environment, it trains a shipped config by name from outside the repository
and carries the kernel source, the license and py.typed."""

import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import inputs

pytestmark = pytest.mark.xdist_group("packaging")


def test_every_package_is_listed():
  with open(os.path.join(inputs.REPO, "pyproject.toml"), "rb") as f:
    listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
  root = pathlib.Path(inputs.REPO)
  found = {".".join(p.parent.relative_to(root).parts)
           for p in (root / "performer_jax").rglob("__init__.py")}
  assert found | {"performer_jax.configs"} == listed
  assert (root / "configs" / "__init__.py").exists()


def _run(args, **kwargs):
  proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                        **kwargs)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc


def test_wheel_installs_and_trains_a_config_by_name(tmp_path):
  source = tmp_path / "source"
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    source.mkdir(exist_ok=True)
    shutil.copy(os.path.join(inputs.REPO, name), source / name)
  for name in ("performer_jax", "configs"):
    shutil.copytree(os.path.join(inputs.REPO, name), source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps",
        "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)])
  wheel, = glob.glob(str(tmp_path / "dist" / "performer_jax-*.whl"))
  venv = tmp_path / "venv"
  # System site-packages provide jax & co.; performer_jax itself must come
  # from the wheel, not from the repository's editable install.
  # Without its own pip (seconds saved): this interpreter's pip installs
  # into it.
  _run([sys.executable, "-m", "venv", "--system-site-packages",
        "--without-pip", str(venv)])
  python = str(venv / "bin" / "python")
  _run([sys.executable, "-m", "pip", "--python", python, "install",
        "--no-deps", "--no-index", wheel])
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in inputs.subprocess_env().items()
         if k != "PYTHONPATH"}
  where = _run([python, "-c", (
      "import pathlib, performer_jax, performer_jax.configs.copy as c; "
      "from performer_jax.kernels import build; "
      "root = pathlib.Path(performer_jax.__file__).parent; "
      "print(root); print(pathlib.Path(c.__file__).parent); "
      "print(build.SOURCE.exists(), (root / 'py.typed').exists())")],
               cwd=elsewhere, env=env).stdout.split()
  assert where[0].startswith(str(venv)) and where[1].startswith(str(venv))
  assert where[2:] == ["True", "True"]
  assert glob.glob(str(venv / "lib" / "python*" / "site-packages" /
                       "performer_jax-*.dist-info" / "licenses" / "LICENSE"))
  workdir = tmp_path / "run"
  _run([str(venv / "bin" / "performer-train"), "--config=copy:smoke",
        "--config.trainer.steps=2", "--config.trainer.eval_every=0",
        "--config.optimizer.warmup_steps=1", f"--workdir={workdir}"],
       cwd=elsewhere, env=env)
  assert (workdir / "config.json").exists()
  assert os.listdir(workdir / "checkpoints")
