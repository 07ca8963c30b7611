"""Config-driven training: `train_and_evaluate(config, workdir)` and the CLI.

  performer-train --config=copy:smoke --workdir=/tmp/run
  python -m performer_jax.train --config=copy --workdir=/tmp/run
"""

from performer_jax.train.cli import main
from performer_jax.train.loop import NonFiniteLossError
from performer_jax.train.loop import TrainResult
from performer_jax.train.trainer import Trainer
from performer_jax.train.trainer import train_and_evaluate

__all__ = ["main", "train_and_evaluate", "Trainer", "TrainResult",
           "NonFiniteLossError"]
