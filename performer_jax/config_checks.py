"""Value checks shared by the config validators (model and trainer sections).

Each check raises `error` (ValueError or a subclass) with a message that
names the key and what it accepts, so a typo fails before anything compiles.
"""

from __future__ import annotations

from typing import Any


def check_keys(section: Any, expected: tuple[str, ...], where: str,
               error: type[ValueError] = ValueError) -> None:
  """`section` must have exactly the keys `expected`."""
  if not hasattr(section, "keys"):
    raise error(f"{where} must be a ConfigDict with keys {list(expected)}, "
                f"got {type(section).__name__}")
  got = set(section.keys())
  unknown = sorted(got - set(expected))
  missing = [k for k in expected if k not in got]
  if unknown:
    raise error(f"unknown key(s) {unknown} in {where}; allowed keys are "
                f"{list(expected)}")
  if missing:
    raise error(f"missing key(s) {missing} in {where}; required keys are "
                f"{list(expected)}")


def check_int(value: Any, name: str, minimum: int,
              error: type[ValueError] = ValueError) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise error(f"{name} must be an int >= {minimum}, got {value!r}")


def check_bool(value: Any, name: str,
               error: type[ValueError] = ValueError) -> None:
  if not isinstance(value, bool):
    raise error(f"{name} must be True or False, got {value!r}")


def check_choice(value: Any, name: str, allowed: tuple[str, ...],
                 error: type[ValueError] = ValueError) -> None:
  if value not in allowed:
    raise error(f"{name} must be one of {list(allowed)}, got {value!r}")
