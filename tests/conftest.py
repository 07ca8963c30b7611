"""Shared pytest setup: CPU only, float32 matmuls exact, cheap compiles.

Most tests compile tiny programs once, so compile time dominates the suite.
XLA's backend optimization level 0 skips LLVM's expensive passes, and the
classic elemental emitters compile faster than the fusion emitters: together
the suite runs about twice as fast. Each program is emitted as one LLVM
module, not split for parallel codegen: the two xdist workers already keep
both cores busy, and the split costs ~10% more CPU. Results stay IEEE
float32 (no fast-math either way); every tolerance in the suite is chosen to
hold whatever the code generator does (fused or not, FMA or not).
Subprocesses started by tests inherit the flags through the environment.
"""

import gc
import os
import pathlib
import shutil
import tempfile

from tests.helpers import xla_flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Raw files that tests pass by path are prepared into a cache of this run,
# not the user's (pytest-xdist workers share it: preparation is atomic).
os.environ.setdefault("PERFORMER_PREPARED_DIR", os.path.join(
    tempfile.gettempdir(), f"performer_jax_test_prepared_{os.getppid()}"))
# One compilation cache per test run, shared by both xdist workers and every
# subprocess: many tests build the same tiny programs, and a hit skips XLA's
# compile (not tracing). Entries are keyed by the program, the flags and the
# devices, so results are those of a fresh compile; an unreadable entry is
# compiled again with a warning. A cache the user set is theirs: kept.
_OWN_JAX_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.environ["PERFORMER_PREPARED_DIR"] + "_jax_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
_FAST_COMPILE = ("--xla_backend_optimization_level=0",
                 "--xla_cpu_use_fusion_emitters=false",
                 "--xla_cpu_parallel_codegen_split_count=1")
# XLA aborts the whole process on a flag it does not know (jaxlib 0.11 dropped
# the fusion-emitter switch), so each flag is tried once in a child process
# and only the accepted ones are kept. The controller probes; xdist workers
# and test subprocesses inherit XLA_FLAGS and the marker below.
if os.environ.get("PERFORMER_JAX_TEST_FLAGS_PROBED") != "1":
  _flags = xla_flags.accepted(
      [f for f in _FAST_COMPILE if f not in os.environ.get("XLA_FLAGS", "")])
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), *_flags]).strip()
  os.environ["PERFORMER_JAX_TEST_FLAGS_PROBED"] = "1"

# Tracing allocates millions of short-lived objects: collecting the young
# generation every 20,000 allocations instead of 700 cuts GC time ~4x.
gc.set_threshold(20_000, 10, 10)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir",
                  os.environ["JAX_COMPILATION_CACHE_DIR"])

# Modules whose tests start subprocesses or train whole models: they run
# first, so that the two xdist workers finish together instead of one idling
# while the other works through a long tail.
_FIRST = ("train/test_distributed_multihost.py",
          "train/test_trainer_e2e.py", "test_configs.py",
          "test_packaging.py", "experiments/test_scaling.py",
          "experiments/test_slim.py", "test_experiment.py",
          "inference/test_cli_commands.py", "core/test_sharding.py",
          "attention/test_sequence.py")


def pytest_runtest_setup(item):
  """`@pytest.mark.needs_kernel` (or a parameter marked so): the compiled
  CPU kernel must be runnable (tests/helpers/inputs.py's require_kernel)."""
  if item.get_closest_marker("needs_kernel"):
    # pylint: disable-next=g-import-not-at-top
    from tests.helpers import inputs
    inputs.require_kernel()


def pytest_collection_modifyitems(config, items):
  del config
  def rank(item):
    path = pathlib.Path(str(item.fspath)).as_posix()
    for i, name in enumerate(_FIRST):
      if path.endswith("tests/" + name):
        return i
    return len(_FIRST)
  items.sort(key=rank)


def pytest_sessionfinish(session, exitstatus):
  """The controller (not an xdist worker) removes the run's caches."""
  del exitstatus
  if not hasattr(session.config, "workerinput"):
    shutil.rmtree(os.environ["PERFORMER_PREPARED_DIR"], ignore_errors=True)
    if _OWN_JAX_CACHE:
      shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"],
                    ignore_errors=True)
