"""Command line: absl flags with an ml_collections config file.

  performer-train --config=configs/copy.py:smoke \
      --config.model.num_layers=4 --workdir=/tmp/run

Flags are defined when `main` runs, not at import, so importing
performer_jax.train never touches absl's global flags.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence


def config_root(argv: Sequence[str]) -> str | None:
  """The directory above the --config file's folder, if a file is given.

  Config files import their shared base as `from configs import common`, so
  the folder holding `configs/` must be importable, for the console script
  as much as for `python -m` from the repository root.
  """
  for i, arg in enumerate(argv):
    path = None
    if arg.startswith("--config="):
      path = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    if path:
      path = path.split(":", 1)[0]
      return os.path.dirname(os.path.dirname(os.path.abspath(path)))
  return None


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-train` and `python -m performer_jax.train`."""
  if argv is None:
    # XLA:CPU steps run much faster under tcmalloc (see allocator.py).
    from performer_jax import allocator  # pylint: disable=g-import-not-at-top
    allocator.reexec_under_tcmalloc(
        ["-m", "performer_jax.train", *sys.argv[1:]])
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv = list(sys.argv if argv is None else argv)
  root = config_root(argv)
  if root and root not in sys.path:
    sys.path.insert(0, root)
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        "config", None, "Training config file, e.g. configs/copy.py:smoke. "
        "Override fields with --config.trainer.steps=10.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                        "metrics.jsonl, TensorBoard events and config.json.")
    flags.mark_flags_as_required(["config", "workdir"])

  def run(unused_argv):
    from performer_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
    from performer_jax.train import trainer  # pylint: disable=g-import-not-at-top
    logging.getLogger("performer_jax.train").setLevel(logging.INFO)
    # Orbax logs every checkpoint step at INFO through absl; keep warnings.
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = flags.FLAGS.config
    try:
      config.keys()  # a config file that failed to load raises here
    except OSError as e:
      sys.exit(f"error: could not load the --config file: {e}")
    try:
      config_lib.validate_config(config)
    except config_lib.ConfigError as e:
      sys.exit(f"error: bad config: {e}")
    result = trainer.train_and_evaluate(config, flags.FLAGS.workdir)
    if result.status == "preempted":
      logging.info("preempted; rerun the same command to resume")

  app.run(run, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing, with a clear message for unknown config keys."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nUsage: {os.path.basename(argv[0])} "
             "--config=configs/copy.py:smoke --workdir=DIR "
             "[--config.section.key=value ...]")
  except (AttributeError, KeyError) as e:
    # config_flags raises these for `--config.a.b=...` when a or b does not
    # exist; the innermost message names the key and suggests a fix.
    inner: object = e
    while isinstance(inner, BaseException) and inner.args:
      inner = inner.args[0]
    overrides = [a.split("=", 1)[0] for a in argv
                 if a.startswith("--config.")]
    detail = str(inner).replace("\n", ": ")
    sys.exit(f"error: unknown config key {detail} (in the overrides "
             f"{overrides}); only fields that exist in the config file can be "
             "overridden. Check the spelling against the config file.")
