"""Every config section is a frozen dataclass that checks itself.

A section names each field once, with its type and default, and checks its
values in `check()`. `Section.parse(mapping)` builds it from a ConfigDict
(or any mapping), rejecting unknown keys; `Section.defaults()` gives the
ConfigDict that config files start from, so command-line overrides
(`--config.model.num_layers=4`) reach exactly these fields. Every error is a
`ConfigError` naming the full key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, Mapping, Sequence

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """A config key or value that cannot be used; the message names the key,
  the value and the fix."""


def as_mapping(section: Any, where: str) -> Mapping[str, Any]:
  if isinstance(section, ml_collections.ConfigDict):
    return section.to_dict()
  if isinstance(section, Mapping):
    return section
  raise ConfigError(f"{where} must be a section (a ConfigDict of keys), got "
                    f"{section!r}")


def _optional_of(hint) -> type | None:
  """`int` for a hint `int | None` (the type a None default stands for)."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(hint)) == 2:
      return args[0]
  return None


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of every config section.

  Subclasses are frozen dataclasses with a `PATH` (e.g. "model.attention",
  used in messages) and a `check()` that calls the `_int`, `_number`,
  `_choice` and `_bool` helpers on their fields.
  """
  PATH: ClassVar[str] = ""

  def __post_init__(self):
    self.check()

  def check(self) -> None:
    """Raises ConfigError naming the first bad field."""

  # -- building -------------------------------------------------------------

  @classmethod
  def key(cls, name: str) -> str:
    return f"config.{cls.PATH}.{name}" if cls.PATH else f"config.{name}"

  @classmethod
  def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)

  @classmethod
  def parse(cls, section: Any, **fixed: Any):
    """Builds the section from a mapping; `fixed` values are not read from it.

    Unknown and missing keys fail: a mapping must name every field, as the
    ConfigDicts from `defaults()` do (build the dataclass directly to rely
    on defaults).
    """
    mapping = as_mapping(section, cls.key("")[:-1] or "config")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
      raise ConfigError(
          f"unknown key {cls.key(unknown[0])}; {cls.key('')[:-1]} accepts "
          f"{sorted(n for n in names if n not in fixed)}. Check the spelling "
          "against the config file.")
    missing = [f for f in dataclasses.fields(cls)
               if f.init and f.name not in mapping and f.name not in fixed]
    if missing:
      field = missing[0]
      default = (field.default if field.default is not dataclasses.MISSING
                 else field.default_factory())
      if isinstance(default, Section):
        default = default.to_dict()
      raise ConfigError(f"missing key {cls.key(field.name)} (default: "
                        f"{default!r}); a config section must name every "
                        "field.")
    hints = cls.hints()
    kwargs = dict(fixed)
    for name in names:
      if name in fixed:
        continue
      value = mapping[name]
      hint = hints[name]
      if isinstance(hint, type) and issubclass(hint, Section):
        value = hint.parse(value)
      kwargs[name] = value
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """Nested plain-Python dict of the fields (JSON-friendly for str/num)."""
    out = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      out[f.name] = value.to_dict() if isinstance(value, Section) else value
    return out

  def to_config_dict(self) -> ml_collections.ConfigDict:
    """These values as a ConfigDict whose fields accept overrides of their
    declared type, including None for optional fields."""
    cfg = ml_collections.ConfigDict()
    hints = self.hints()
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, Section):
        value = value.to_config_dict()
      else:
        inner = _optional_of(hints[f.name])
        if inner is not None:
          value = (config_dict.placeholder(inner) if value is None else
                   config_dict.FieldReference(value, field_type=inner))
      setattr(cfg, f.name, value)
    return cfg

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    return cls().to_config_dict()

  # -- value checks ---------------------------------------------------------

  def _fail(self, name: str, wanted: str) -> None:
    raise ConfigError(f"{self.key(name)} must be {wanted}, got "
                      f"{getattr(self, name)!r}")

  def _int(self, name: str, minimum: int | None = None, *,
           optional: bool = False) -> None:
    value = getattr(self, name)
    if optional and value is None:
      return
    if isinstance(value, bool) or not isinstance(value, int) or (
        minimum is not None and value < minimum):
      wanted = "an integer" + (f" >= {minimum}" if minimum is not None
                               else "")
      self._fail(name, wanted + (" or None" if optional else ""))

  def _number(self, name: str, low: float = -math.inf,
              high: float = math.inf, *, low_open: bool = False,
              high_open: bool = True) -> None:
    value = getattr(self, name)
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value))
    if ok:
      ok = (value > low if low_open else value >= low) and (
          value < high if high_open else value <= high)
    if not ok:
      lo, hi = "(" if low_open else "[", ")" if high_open else "]"
      self._fail(name, f"a number in {lo}{low}, {high}{hi}")

  def _choice(self, name: str, allowed: Sequence[str]) -> None:
    if getattr(self, name) not in allowed:
      self._fail(name, f"one of {list(allowed)}")

  def _bool(self, name: str) -> None:
    if not isinstance(getattr(self, name), bool):
      self._fail(name, "True or False")

  def _str(self, name: str) -> None:
    if not isinstance(getattr(self, name), str):
      self._fail(name, "a string")
