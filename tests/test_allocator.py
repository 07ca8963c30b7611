"""The allocator switch for one's own scripts and notebooks, and the one
hint the library gives on the CPU backend."""

import logging

import pytest

from performer_jax import allocator


@pytest.fixture(name="fresh_hint")
def fixture_fresh_hint(monkeypatch):
  monkeypatch.setattr(allocator, "_hinted", False)
  monkeypatch.delenv(allocator.HINT_SWITCH, raising=False)
  monkeypatch.delenv(allocator.SWITCH, raising=False)


def test_the_hint_is_given_once_and_names_the_switch(fresh_hint, caplog,
                                                     monkeypatch):
  del fresh_hint
  if not allocator.sys.platform.startswith("linux"):
    pytest.skip("the hint is for Linux's glibc malloc")
  monkeypatch.setattr(allocator, "tcmalloc_active", lambda: False)
  with caplog.at_level(logging.WARNING, "performer_jax"):
    allocator.hint_once()
    allocator.hint_once()
  hints = [r for r in caplog.records if "use_fast_allocator" in r.message]
  assert len(hints) == 1 and "LD_PRELOAD" in hints[0].message


def test_the_hint_can_be_silenced(fresh_hint, caplog, monkeypatch):
  del fresh_hint
  monkeypatch.setattr(allocator, "tcmalloc_active", lambda: False)
  monkeypatch.setenv(allocator.HINT_SWITCH, "0")
  with caplog.at_level(logging.WARNING, "performer_jax"):
    allocator.hint_once()
  assert not caplog.records


def test_in_a_running_interpreter_the_switch_keeps_freed_memory(
    fresh_hint, monkeypatch):
  """Not a script (as in a notebook): no re-execution; glibc is tuned when
  it is the allocator."""
  del fresh_hint
  monkeypatch.setattr(allocator, "reexec_under_tcmalloc",
                      lambda argv: pytest.fail("re-executed"))
  monkeypatch.setattr(allocator.sys.modules["__main__"], "__file__", None,
                      raising=False)
  calls = []
  monkeypatch.setattr(allocator, "keep_freed_memory",
                      lambda: calls.append(1) or True)
  want = "tcmalloc" if allocator.tcmalloc_active() else "glibc kept"
  assert allocator.use_fast_allocator() == want
  assert allocator._hinted  # pylint: disable=protected-access
