"""Checks that need 8 devices: the device count is fixed when JAX starts, so
a checks module runs them all in ONE subprocess with 8 forced CPU devices
and prints one JSON line, check name -> a result (a number, a list) or a
string (the error). The test module reads its part with `found`.

  # in the checks module (run as `python -m tests.<...>_checks`):
  record = multidevice.Recorder()
  @record("name")
  def check(): return multidevice.rel_error(got, want)
  ...
  record.print()

  # in the test module:
  results = multidevice.fixture("tests.<...>_checks")
"""

import json
import subprocess
import sys
import traceback

import pytest

from tests.helpers import inputs


class Recorder:
  """A decorator factory storing each check's result, or its traceback."""

  def __init__(self):
    self.results = {}

  def __call__(self, name):
    def wrap(fn):
      try:
        self.results[name] = fn()
      except Exception:  # pylint: disable=broad-except
        self.results[name] = traceback.format_exc()[-3000:]
      return fn
    return wrap

  def print(self):
    print(json.dumps(self.results))


def rel_error(got, want, floor: float = 0.0) -> float:
  """Largest |got - want| of each leaf over that leaf's largest |want|,
  the scale floored at `floor` times the largest |want| of all leaves (for
  leaves that are zero in exact arithmetic, whose float32 noise has no
  scale of its own)."""
  # pylint: disable-next=g-import-not-at-top
  import jax
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  leaves = jax.tree.leaves(want)
  top = max(float(jnp.max(jnp.abs(w))) for w in leaves)
  errs = []
  for g, w in zip(jax.tree.leaves(got), leaves):
    scale = max(float(jnp.max(jnp.abs(w))), floor * top, 1e-30)
    errs.append(float(jnp.max(jnp.abs(g - w))) / scale)
  return max(errs)


def fixture(module: str):
  """A module-scoped fixture: the checks' results (runs the subprocess)."""
  @pytest.fixture(scope="module")
  def results():
    env = inputs.subprocess_env(
        XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-m", module], env=env,
                          cwd=inputs.REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
  return results


def found(results, prefix: str) -> dict:
  """The results whose names start with `prefix`; fails on any error."""
  hits = {k: v for k, v in results.items() if k.startswith(prefix)}
  assert hits, prefix
  for name, value in hits.items():
    assert not isinstance(value, str), f"{name} failed:\n{value}"
  return hits
