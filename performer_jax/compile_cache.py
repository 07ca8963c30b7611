"""A persistent XLA compilation cache for the command-line tools.

Every `performer-*` command is a fresh process that recompiles the last one's
programs (a resumed train step, each generate or score call). The entry
points turn on JAX's on-disk cache before their first compile; library code
never does. Where: `$JAX_COMPILATION_CACHE_DIR` if set (JAX's own settings
then apply), else `$XDG_CACHE_HOME/performer_jax/xla` (default
`~/.cache/performer_jax/xla`); it may be deleted at any time.
`PERFORMER_JAX_COMPILE_CACHE=0` turns it off. Savings: docs/benchmarks.md.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

SWITCH = "PERFORMER_JAX_COMPILE_CACHE"
# Programs that compile faster than this are not worth a file.
MIN_COMPILE_SECONDS = 0.2


def settings(env: Mapping[str, str]) -> dict[str, Any] | None:
  """The `jax.config` updates for `env`, or None to leave JAX as it is."""
  if env.get(SWITCH, "1") == "0" or env.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  root = env.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return {"jax_compilation_cache_dir": os.path.join(root, "performer_jax",
                                                    "xla"),
          "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS}


def enable(env: Mapping[str, str] | None = None) -> str | None:
  """Turns the cache on for this process; returns its directory (None when
  off). Call before the first compile."""
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ if env is None else env
  updates = settings(env)
  if updates is None:  # off, or the user's own JAX_COMPILATION_CACHE_DIR
    return env.get("JAX_COMPILATION_CACHE_DIR") or None
  for name, value in updates.items():
    jax.config.update(name, value)
  return updates["jax_compilation_cache_dir"]
