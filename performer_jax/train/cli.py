"""Command line: absl flags with an ml_collections config.

  performer-train --config=copy:smoke --workdir=/tmp/run

`--config`: a packaged config's name (`performer_jax.configs.<name>`) or a
path. Flags are defined when `main` runs, not at import. Exit status
(`ExitCode`): 0 finished, 75 preempted (SIGTERM; checkpoint saved, rerun to
resume), 2 bad config, data file or workdir, 3 diverged, 74 checkpoint not
written, 1 anything else; a failed process of a multi-process job exits at
once (`leave`). Tracebacks: `WORKDIR/error.log`, or the terminal (`--verbose`).
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
import re
import sys
import traceback
from typing import Sequence

USAGE = ("--config=copy:smoke --workdir=DIR [--config.section.key=value ...]"
         " (a config name from performer_jax/configs, or a path to a .py "
         "config file)")


_RUNTIME_STATUS = re.compile(
    r"(UNKNOWN|INTERNAL|UNAVAILABLE|ABORTED|CANCELLED|DEADLINE_EXCEEDED|"
    r"RESOURCE_EXHAUSTED|DATA_LOSS): ")


class ExitCode(enum.IntEnum):
  FINISHED = 0
  FAILED = 1
  BAD_INPUT = 2
  DIVERGED = 3
  CHECKPOINT_IO = 74  # EX_IOERR
  PREEMPTED = 75  # EX_TEMPFAIL: rerun to resume


def exit_code(error: BaseException) -> ExitCode:
  """The exit status of a run that raised `error`."""
  # pylint: disable=g-import-not-at-top
  from jax import errors as jax_errors
  from performer_jax.train import checkpoint
  from performer_jax.train import loop
  # pylint: enable=g-import-not-at-top
  if isinstance(error, loop.NonFiniteLossError):
    return ExitCode.DIVERGED
  if isinstance(error, checkpoint.CheckpointError):
    return ExitCode.CHECKPOINT_IO
  # A failure of the runtime (a lost peer, out of memory), which JAX raises
  # as JaxRuntimeError or, on some paths, as a ValueError with the status.
  if isinstance(error, jax_errors.JaxRuntimeError) or _RUNTIME_STATUS.match(
      str(error)):
    return ExitCode.FAILED
  # Config errors, incompatible workdirs, missing or malformed data files.
  if isinstance(error, (ValueError, FileNotFoundError, TypeError)):
    return ExitCode.BAD_INPUT
  return ExitCode.FAILED


def report(error: BaseException, workdir: str | None) -> None:
  """Prints a short message; keeps the traceback in WORKDIR/error.log."""
  import jax  # pylint: disable=g-import-not-at-top
  processes = (jax.process_count() if jax.distributed.is_initialized()
               else 1)
  detail = ""
  if workdir and os.path.isdir(workdir):
    path = os.path.join(workdir, "error.log")
    with open(path, "a") as f:
      traceback.print_exception(error, file=f)
    detail = f"\n(traceback in {path}; --verbose prints it)"
  if processes > 1:
    detail += (f"\nThis is one of {processes} processes: a process that "
               "fails or dies stops them all. Rerun every process with the "
               "same command to resume from the last checkpoint.")
  print(f"error: {error}{detail}", file=sys.stderr)


def leave(code: int) -> None:
  """Exits a failed run with `code`; in a multi-process job it leaves at once
  (`os._exit`): the exit handler of jax.distributed waits at a barrier for
  every process, which a dead peer never reaches, and then aborts after the
  heartbeat timeout (100 s). The run's files are closed by then."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.distributed.is_initialized():
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


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


def shipped_configs() -> list[str]:
  """The names of the configs shipped with the package."""
  import pkgutil  # pylint: disable=g-import-not-at-top
  from performer_jax import configs  # pylint: disable=g-import-not-at-top
  return sorted(m.name for m in pkgutil.iter_modules(configs.__path__)
                if m.name != "options")


def check_config_spec(spec: str) -> None:
  """A ValueError naming the shipped configs when `spec` (`name[:arg]` or
  `path[:arg]`) names neither a shipped config nor an existing file."""
  path = config_path(spec).partition(":")[0]
  if os.path.isfile(path):
    return
  name = spec.partition(":")[0]
  if os.sep in name or name.endswith(".py"):
    raise ValueError(f"--config={spec}: the config file {name} does not "
                     "exist")
  raise ValueError(f"--config={spec}: {name!r} is not a shipped config; "
                   f"choose from {shipped_configs()} (e.g. "
                   "--config=protein_mlm:cpu), or give a path to a .py "
                   "config file")


def check_workdir(workdir: str) -> None:
  """A ValueError when `workdir` cannot be a directory (it, or a folder
  above it, is a file)."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    where = "is a file" if path == os.path.abspath(workdir) else (
        f"cannot be created: {path} is a file")
    raise ValueError(f"--workdir={workdir} {where}; give a directory (it is "
                     "created if missing)")


def _config_specs(argv: Sequence[str]) -> list[str]:
  specs = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      specs.append(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(argv):
      specs.append(argv[i + 1])
  return specs


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

  argv = list(sys.argv if argv is None else argv)
  try:
    for spec in _config_specs(argv):
      check_config_spec(spec)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)
  argv = resolve_config_args(argv)
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        "config", None, "Training config: a name (copy:smoke, "
        "protein_mlm:cpu,favor_relu) or a path to a config file. Override "
        "fields with --config.trainer.steps=10.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                        "metrics.jsonl, TensorBoard events and config.json.")
    flags.DEFINE_bool("verbose", False, "On failure, print the full "
                      "traceback instead of a short message.")
    flags.mark_flags_as_required(["config", "workdir"])

  def run(unused_argv):
    # pylint: disable=g-import-not-at-top
    from performer_jax import compile_cache
    from performer_jax import experiment
    from performer_jax.train import trainer
    # pylint: enable=g-import-not-at-top
    compile_cache.enable()  # a rerun after preemption skips the compiles
    logging.getLogger("performer_jax.train").setLevel(logging.INFO)
    # Orbax logs every checkpoint step at INFO through absl; keep warnings.
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = flags.FLAGS.config
    try:
      config.keys()  # a config file that failed to load raises here
    except OSError as e:
      print(f"error: could not load the --config file: {e}", file=sys.stderr)
      sys.exit(ExitCode.BAD_INPUT)
    try:
      config = experiment.parse(config)
    except experiment.ConfigError as e:
      print(f"error: bad config: {e}", file=sys.stderr)
      sys.exit(ExitCode.BAD_INPUT)
    workdir = flags.FLAGS.workdir
    try:
      check_workdir(workdir)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(ExitCode.BAD_INPUT)
    try:
      result = trainer.train_and_evaluate(config, workdir)
    except Exception as e:  # pylint: disable=broad-except
      if flags.FLAGS.verbose:
        raise
      report(e, workdir)
      leave(exit_code(e))
    if result.status == "preempted":
      logging.info("preempted; rerun the same command to resume")
      sys.exit(ExitCode.PREEMPTED)

  app.run(run, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing, with a clear message for unknown config keys."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {without_traceback(str(e))}\nUsage: performer-train "
          f"{USAGE}", file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)
  except (AttributeError, KeyError) as e:
    # config_flags raises these for `--config.a.b=...` when a or b does not
    # exist; the innermost message names the key and suggests a fix.
    inner: object = e
    while isinstance(inner, BaseException) and inner.args:
      inner = inner.args[0]
    overrides = [a.split("=", 1)[0] for a in argv
                 if a.startswith("--config.")]
    detail = str(inner).replace("\n", ": ")
    print(f"error: unknown config key {detail} (in the overrides "
          f"{overrides}); only fields that exist in the config file can be "
          "overridden. Check the spelling against the config file.",
          file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)


def without_traceback(message: str) -> str:
  """An absl flag error without the traceback config_flags embeds in it
  when the config file's `get_config` raised: its first line and the
  exception's own message (which names the fix)."""
  head, found, tail = message.partition("Traceback (most recent call last):")
  if not found:
    return message
  last = [line for line in tail.splitlines() if line.strip()][-1]
  # "ValueError: unknown ... option(s)" -> its message.
  return f"{head.strip()} {last.partition(': ')[2] or last}"
