"""Runs a process under tcmalloc, so XLA:CPU stops page-faulting every step.

XLA:CPU mallocs an executable's large temporaries and frees them on return;
glibc serves blocks above its mmap threshold with a fresh `mmap`, so every
call faults (and the kernel zeroes) its working set again. tcmalloc keeps
freed memory for reuse (savings: docs/benchmarks.md). It must be preloaded
(`LD_PRELOAD`), so the entry points re-execute once under it when installed
(`libtcmalloc-minimal4`); `PERFORMER_JAX_TCMALLOC=0` opts out. Nothing runs
at import time: in your own code, `performer_jax.use_fast_allocator()`
(re-executes a script; a running interpreter keeps freed memory instead).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Mapping, Sequence

SWITCH = "PERFORMER_JAX_TCMALLOC"
_REEXECED = "PERFORMER_JAX_TCMALLOC_REEXECED"
LIBRARY_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
               "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_tcmalloc(search_dirs: Sequence[str] = SEARCH_DIRS) -> str | None:
  """Path of an installed tcmalloc shared library, or None."""
  for directory in search_dirs:
    for name in LIBRARY_NAMES:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return path
  return None


def env_with_tcmalloc(env: Mapping[str, str],
                      library: str | None = None) -> dict[str, str] | None:
  """`env` with tcmalloc prepended to LD_PRELOAD, or None when there is
  nothing to do: not Linux, opted out, not installed, or already preloaded."""
  if not sys.platform.startswith("linux"):
    return None
  if env.get(SWITCH, "1") == "0" or env.get(_REEXECED) == "1":
    return None
  preload = env.get("LD_PRELOAD", "")
  if "tcmalloc" in preload:
    return None
  library = library or find_tcmalloc()
  if library is None:
    return None
  new_env = dict(env)
  new_env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
  new_env[_REEXECED] = "1"  # Never loop, even if the preload fails.
  return new_env


def reexec_under_tcmalloc(argv: Sequence[str]) -> None:
  """Replaces this process by `python *argv` under tcmalloc, if applicable.

  Call it first thing in a `__main__`, before any work: it does not return
  when it re-executes. `argv` excludes the interpreter, e.g.
  `["-m", "performer_jax.train", *sys.argv[1:]]`.
  """
  env = env_with_tcmalloc(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv], env)


def tcmalloc_active() -> bool:
  """Whether tcmalloc is mapped into this process (Linux; False elsewhere)."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as f:
      return any("tcmalloc" in line for line in f)
  except OSError:
    return False


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
_INT_MAX = 2 ** 31 - 1
HINT_SWITCH = "PERFORMER_JAX_ALLOCATOR_HINT"
_hinted = False
log = logging.getLogger("performer_jax")


def keep_freed_memory() -> bool:
  """Makes glibc malloc keep freed memory in this (running) process: no
  block is served by its own `mmap` (M_MMAP_MAX 0; the mmap threshold alone
  cannot rise above 32 MiB, the size of the large temporaries) and freed
  memory is never returned to the kernel (M_TRIM_THRESHOLD INT_MAX). What
  the preload does for a process that has already started (a notebook),
  except for blocks above 64 MiB from XLA's worker threads, which glibc
  still maps and unmaps. Memory stays at the process's peak. False where
  glibc is not the allocator."""
  if not sys.platform.startswith("linux") or tcmalloc_active():
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in (
      (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX)))


def use_fast_allocator() -> str:
  """The switch for your own scripts and notebooks: XLA:CPU's fast path.

  Call it first thing. In a script (`python my_script.py ...`) it
  re-executes the script under tcmalloc when that is installed (it then
  does not return); in a notebook or other running interpreter it tunes
  glibc malloc in place (`keep_freed_memory`). Returns what it did:
  "tcmalloc" (already active), "glibc kept" or "unchanged".
  """
  global _hinted
  _hinted = True  # asked for it: no hint
  if tcmalloc_active():
    return "tcmalloc"
  main = sys.modules.get("__main__")
  script = getattr(main, "__file__", None)
  interactive = "ipykernel" in sys.modules or script is None or bool(
      getattr(sys, "ps1", None))
  if not interactive and os.path.isfile(script) and sys.orig_argv:
    reexec_under_tcmalloc(sys.orig_argv[1:])
  return "glibc kept" if keep_freed_memory() else "unchanged"


def hint_once() -> None:
  """On the CPU backend without tcmalloc, says once how to get the fast
  path (`PERFORMER_JAX_ALLOCATOR_HINT=0` silences it)."""
  global _hinted
  if _hinted:
    return
  _hinted = True
  if os.environ.get(HINT_SWITCH, "1") == "0" or os.environ.get(
      SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu" or tcmalloc_active():
    return
  log.warning(
      "performer-jax: XLA:CPU runs markedly slower under the system "
      "allocator than under tcmalloc. Call performer_jax.use_fast_allocator()"
      " first thing in your script, or start Python (or the notebook's "
      "kernel) with LD_PRELOAD=%s (%s=0 silences this).", find_tcmalloc() or "<libtcmalloc_minimal.so.4"
      "; apt-get install libtcmalloc-minimal4>", HINT_SWITCH)
