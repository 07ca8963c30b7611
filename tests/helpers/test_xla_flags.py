"""The suite's XLA flags: a flag the installed jaxlib rejects is dropped."""

import os

from tests.helpers import xla_flags


def test_unknown_flag_is_dropped_and_known_kept():
  known = "--xla_backend_optimization_level=0"
  assert xla_flags.accepted(["--xla_no_such_flag_in_any_jaxlib=1", known]
                            ) == [known]


def test_suite_flags_are_all_accepted():
  """What conftest exported starts a backend (jaxlib aborts otherwise)."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  assert "--xla_backend_optimization_level=0" in flags
  assert xla_flags.accepted(flags) == flags
