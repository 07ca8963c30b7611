"""Config-driven training: `train_and_evaluate(config, workdir)` and the CLI.

  performer-train --config=copy:smoke --workdir=/tmp/run
  python -m performer_jax.train --config=copy --workdir=/tmp/run

The names below are imported on first use: the command line re-executes
itself under tcmalloc and reports a bad config before JAX, Flax and Orbax
are loaded.
"""

import importlib

_EXPORTS = {"main": "cli", "train_and_evaluate": "trainer",
            "Trainer": "trainer", "TrainResult": "loop",
            "NonFiniteLossError": "loop"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
  return getattr(module, name)


def __dir__():
  return sorted(list(globals()) + __all__)
