"""The command-line tools' persistent compilation cache."""

import os
import subprocess
import sys

from performer_jax import compile_cache
from tests.helpers import inputs


def test_settings_default_location_and_what_wins(tmp_path):
  home = str(tmp_path)
  got = compile_cache.settings({"XDG_CACHE_HOME": home})
  assert got["jax_compilation_cache_dir"] == os.path.join(
      home, "performer_jax", "xla")
  assert got["jax_persistent_cache_min_compile_time_secs"] > 0
  # The user's own JAX cache, or the opt-out, leave JAX alone.
  assert compile_cache.settings({"JAX_COMPILATION_CACHE_DIR": home}) is None
  assert compile_cache.settings({compile_cache.SWITCH: "0",
                                 "XDG_CACHE_HOME": home}) is None
  without_xdg = compile_cache.settings({})
  assert without_xdg["jax_compilation_cache_dir"].endswith(
      os.path.join(".cache", "performer_jax", "xla"))


PROGRAM = """
import sys
from performer_jax import compile_cache
print(compile_cache.enable())
import jax, jax.numpy as jnp
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(float(jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((8, 8))).sum()))
"""


def run_program(env):
  return subprocess.run([sys.executable, "-c", PROGRAM], env=env,
                        cwd=inputs.REPO, capture_output=True, text=True,
                        check=True, timeout=120).stdout.split()


def test_enable_writes_compiled_programs_where_it_says(tmp_path):
  env = inputs.subprocess_env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop(compile_cache.SWITCH, None)
  where, _ = run_program(env)
  assert where == str(tmp_path / "xdg" / "performer_jax" / "xla")
  assert [f for f in os.listdir(where) if f.startswith("jit_")]
  # Opted out: nothing is written.
  env[compile_cache.SWITCH] = "0"
  env["XDG_CACHE_HOME"] = str(tmp_path / "off")
  where, _ = run_program(env)
  assert where == "None" and not (tmp_path / "off").exists()
