"""Validation of a task's `config.data` section against its defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def check_keys(data_config: Mapping[str, Any] | ml_collections.ConfigDict,
               reference: ml_collections.ConfigDict, task: str) -> None:
  """Raises ValueError naming any unknown, missing or mistyped key.

  Args:
    data_config: the `config.data` section to check.
    reference: the task's default data config (the allowed keys and types).
    task: task name for the messages.
  """
  given = set(data_config.keys())
  allowed = set(reference.keys())
  for key in sorted(given - allowed):
    raise ValueError(f"unknown key data.{key} for task {task!r}; allowed keys: "
                     f"{sorted(allowed)}")
  for key in sorted(allowed - given):
    raise ValueError(f"missing key data.{key} for task {task!r} (default: "
                     f"{reference[key]!r})")
  for key in sorted(allowed):
    want, got = type(reference[key]), data_config[key]
    ok = isinstance(got, want) and not (want is int and isinstance(got, bool))
    if want is float and isinstance(got, int) and not isinstance(got, bool):
      ok = True
    if not ok:
      raise ValueError(f"data.{key} must be a {want.__name__}, got "
                       f"{got!r} ({type(got).__name__}) for task {task!r}")


def positive(data_config, key: str) -> int:
  """The value of an int key that must be >= 1."""
  value = data_config[key]
  if value < 1:
    raise ValueError(f"data.{key} must be >= 1, got {value}")
  return int(value)


def non_negative(data_config, key: str) -> int:
  value = data_config[key]
  if value < 0:
    raise ValueError(f"data.{key} must be >= 0, got {value}")
  return int(value)


def choice(data_config, key: str, choices: Sequence[str]) -> str:
  value = data_config[key]
  if value not in choices:
    raise ValueError(f"data.{key} must be one of {list(choices)}, got "
                     f"{value!r}")
  return value


def variant_choice(variant: str, variants: Sequence[str], task: str) -> str:
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r} for task {task!r}; choose "
                     f"from {list(variants)}")
  return variant
