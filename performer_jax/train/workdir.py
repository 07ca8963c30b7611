"""A workdir is bound to its run: config and metrics match its checkpoints.

A resuming run first compares its config with `config.json`
(`check_resume`): a different task, model or data shape is refused, keys
listed, before anything is written; loop settings (steps, logging, eval,
checkpointing, the optimizer schedule, the mesh) may change.
`--config.trainer.allow_config_change=true` accepts any change.
`config.json` is rewritten only once the state is restored or initialized;
every run appends to `config_history.jsonl`. `truncate_metrics` drops the
records a crashed run wrote past its newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any, Iterable, Mapping

from performer_jax import experiment

log = logging.getLogger("performer_jax.train")

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
METRICS_FILE = "metrics.jsonl"
# Keys that may differ between the run that wrote a checkpoint and the run
# that resumes it: they change how the loop runs, not what it trains.
# (Data keys that only steer evaluation or checking are in
# RESUMABLE_DATA_KEYS.)
RESUMABLE_SECTIONS = ("trainer", "optimizer", "mesh", "distributed")
RESUMABLE_DATA_KEYS = ("num_eval_batches", "eval_path", "eval_split",
                       "verify",
                       # A run that skipped no record trains the same data
                       # either way; one that now fails says so.
                       "skip_invalid", "strict_fasta")
# Top-level keys that may differ: model_api changes the code that runs, not
# the variables (Linen and NNX share the checkpoint layout).
RESUMABLE_KEYS = ("model_api",)


class IncompatibleWorkdirError(ValueError):
  """The workdir holds checkpoints of a run with another task, model or
  data shape."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"model": {"attention": {"kind": x}}} -> {"model.attention.kind": x}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def differences(saved: Mapping[str, Any], new: Mapping[str, Any]
                ) -> dict[str, tuple[Any, Any]]:
  """Flattened key -> (saved value, new value) for every key that differs
  (a key present on one side only counts, as `<missing>`)."""
  old, cur = flatten(saved), flatten(new)
  missing = "<missing>"
  return {k: (old.get(k, missing), cur.get(k, missing))
          for k in sorted(set(old) | set(cur))
          if old.get(k, missing) != cur.get(k, missing)}


def resumable(key: str) -> bool:
  section, _, rest = key.partition(".")
  return key in RESUMABLE_KEYS or section in RESUMABLE_SECTIONS or (
      section == "data" and rest in RESUMABLE_DATA_KEYS)


def has_checkpoints(workdir: str) -> bool:
  """True if `<workdir>/checkpoints` holds a step directory."""
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and any(name.isdigit()
                                     for name in os.listdir(path))


def read_config(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise IncompatibleWorkdirError(
        f"{path} cannot be read ({e}); it describes the checkpoints in "
        f"{workdir}. Restore it, or train in a new workdir.") from None


def check_resume(config: experiment.ExperimentConfig, workdir: str,
                 has_checkpoint: bool) -> dict[str, tuple[Any, Any]]:
  """Checks that `config` may continue the checkpoints in `workdir`.

  Returns the (allowed) differences, to be logged. Raises
  IncompatibleWorkdirError listing the keys that may not change.
  """
  saved = read_config(workdir) if has_checkpoint else None
  if saved is None:
    return {}
  diff = differences(saved, config.to_dict())
  # The task and the model builder first: they explain the rest.
  first = ("task", "model_builder")
  refused = {k: diff[k] for k in sorted(
      diff, key=lambda k: (k not in first, first.index(k) if k in first
                           else 0, k)) if not resumable(k)}
  if refused and not config.trainer.allow_config_change:
    listing = "; ".join(f"{k}: {old!r} -> {new!r}"
                        for k, (old, new) in refused.items())
    raise IncompatibleWorkdirError(
        f"{workdir} holds checkpoints of another run: {listing}. Train in a "
        "new workdir, or pass --config.trainer.allow_config_change=true to "
        "continue these checkpoints with the new config anyway.")
  return diff


def _atomic_write(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def record_config(config: experiment.ExperimentConfig, workdir: str,
                  start_step: int) -> None:
  """Writes config.json and appends to the config history (process 0)."""
  as_dict = config.to_dict()
  _atomic_write(os.path.join(workdir, CONFIG_FILE),
                json.dumps(as_dict, indent=2))
  with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
    f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "start_step": start_step, "config": as_dict}) + "\n")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of metrics.jsonl ([] if there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str, last_step: int) -> int:
  """Drops the records after `last_step` (written after the checkpoint the
  run resumes from); returns how many were dropped."""
  records = read_metrics(workdir)
  keep = [r for r in records if r["step"] <= last_step]
  if len(keep) < len(records):
    _atomic_write(os.path.join(workdir, METRICS_FILE),
                  "".join(json.dumps(r) + "\n" for r in keep))
  return len(records) - len(keep)


def logged_steps(records: Iterable[Mapping[str, Any]], split: str
                 ) -> set[int]:
  return {int(r["step"]) for r in records if r.get("split") == split}
