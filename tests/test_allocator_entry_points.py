"""Tests for performer_jax/allocator.py: when and how the entry points
re-execute under tcmalloc."""

import os
import subprocess
import sys

import pytest

from performer_jax import allocator


@pytest.fixture
def fake_lib(tmp_path):
  path = tmp_path / "libtcmalloc_minimal.so.4"
  path.write_bytes(b"")
  return str(path)


def test_find_tcmalloc_searches_the_given_dirs(tmp_path, fake_lib):
  assert allocator.find_tcmalloc([str(tmp_path)]) == fake_lib
  assert allocator.find_tcmalloc([str(tmp_path / "missing")]) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_env_with_tcmalloc(fake_lib):
  env = allocator.env_with_tcmalloc({"LD_PRELOAD": "libx.so", "A": "1"},
                                    library=fake_lib)
  assert env["LD_PRELOAD"] == f"{fake_lib}:libx.so" and env["A"] == "1"
  # Opted out, already preloaded, or already re-executed once: nothing.
  assert allocator.env_with_tcmalloc({allocator.SWITCH: "0"},
                                     library=fake_lib) is None
  assert allocator.env_with_tcmalloc({"LD_PRELOAD": "/x/libtcmalloc.so"},
                                     library=fake_lib) is None
  assert allocator.env_with_tcmalloc(env, library=fake_lib) is None


@pytest.mark.skipif(allocator.find_tcmalloc() is None,
                    reason="tcmalloc is not installed")
def test_reexec_runs_the_child_under_tcmalloc():
  code = ("import sys; from performer_jax import allocator; "
          "allocator.reexec_under_tcmalloc(['-c', 'from performer_jax import "
          "allocator; print(allocator.tcmalloc_active())'])\n"
          "print('not re-executed')")
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", allocator.SWITCH)}
  env.pop("PERFORMER_JAX_TCMALLOC_REEXECED", None)
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == ["True"]
  env[allocator.SWITCH] = "0"
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == ["not", "re-executed"]
