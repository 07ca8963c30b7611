"""Config-driven training: `train_and_evaluate(config, workdir)` and the CLI.

  performer-train --config=configs/copy.py:smoke --workdir=/tmp/run
  python -m performer_jax.train --config=configs/copy.py --workdir=/tmp/run
"""

from performer_jax.train.cli import main
from performer_jax.train.trainer import Trainer, TrainResult
from performer_jax.train.trainer import train_and_evaluate

__all__ = ["main", "train_and_evaluate", "Trainer", "TrainResult"]
