"""Command line: absl flags with an ml_collections config.

  performer-train --config=copy:smoke --config.model.num_layers=4 \
      --workdir=/tmp/run
  performer-train --config=path/to/my_config.py:arg --workdir=/tmp/run

`--config` takes a config shipped with the package by name
(`performer_jax.configs.<name>`, the repository's configs/ folder) or a path
to a config file. Flags are defined when `main` runs, not at import, so
importing performer_jax.train never touches absl's global flags.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Sequence

USAGE = ("--config=copy:smoke --workdir=DIR [--config.section.key=value ...]"
         " (a config name from performer_jax/configs, or a path to a .py "
         "config file)")


def config_path(spec: str) -> str:
  """`name[:arg]` of a shipped config -> `path/to/name.py[:arg]`; a path to a
  file passes through unchanged."""
  name, sep, arg = spec.partition(":")
  if os.sep in name or name.endswith(".py") or not name.isidentifier():
    return spec
  found = importlib.util.find_spec(f"performer_jax.configs.{name}")
  if found is None or found.origin is None:
    return spec  # config_flags then reports the missing file
  return found.origin + sep + arg


def resolve_config_args(argv: Sequence[str]) -> list[str]:
  """argv with a named `--config` replaced by its file's path."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_path(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-train` and `python -m performer_jax.train`."""
  if argv is None:
    # XLA:CPU steps run much faster under tcmalloc (see allocator.py).
    from performer_jax import allocator  # pylint: disable=g-import-not-at-top
    allocator.reexec_under_tcmalloc(
        ["-m", "performer_jax.train", *sys.argv[1:]])
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv = resolve_config_args(sys.argv if argv is None else argv)
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        "config", None, "Training config: a name (copy:smoke, "
        "protein_mlm:cpu,favor_relu) or a path to a config file. Override "
        "fields with --config.trainer.steps=10.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                        "metrics.jsonl, TensorBoard events and config.json.")
    flags.mark_flags_as_required(["config", "workdir"])

  def run(unused_argv):
    # pylint: disable=g-import-not-at-top
    from performer_jax.config import experiment
    from performer_jax.train import trainer
    # pylint: enable=g-import-not-at-top
    logging.getLogger("performer_jax.train").setLevel(logging.INFO)
    # Orbax logs every checkpoint step at INFO through absl; keep warnings.
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = flags.FLAGS.config
    try:
      config.keys()  # a config file that failed to load raises here
    except OSError as e:
      sys.exit(f"error: could not load the --config file: {e}")
    try:
      config = experiment.parse(config)
    except experiment.ConfigError as e:
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
    sys.exit(f"error: {e}\nUsage: {os.path.basename(argv[0])} {USAGE}")
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
