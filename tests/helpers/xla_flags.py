"""Which XLA flags the installed jaxlib accepts, found without aborting.

XLA parses `XLA_FLAGS` when the first backend starts and aborts the process
on a flag it does not know, so a flag is tried in a child process first.
"""

from __future__ import annotations

import os
import subprocess
import sys

_PROBE = "import jax; jax.devices('cpu')"


def _starts(flags: list[str]) -> bool:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), *flags]))
  try:
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env,
                          capture_output=True, timeout=120, check=False)
  except subprocess.TimeoutExpired:
    return False
  return proc.returncode == 0


def accepted(flags: list[str]) -> list[str]:
  """The subset of `flags` that the installed XLA starts with (in order).

  One child process when all are known (the common case), one per flag
  otherwise.
  """
  if not flags or _starts(flags):
    return list(flags)
  return [f for f in flags if _starts([f])]
