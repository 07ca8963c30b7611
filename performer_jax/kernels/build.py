"""Builds and locates the C++ FFI kernels of performer_jax.

Kernels are compiled with `-march=native`, so the library name hashes the
source, compiler flags, jaxlib version (its FFI headers) and CPU feature
flags: a cache shared between CPUs or jaxlib versions never loads a
mismatched build. `python -m performer_jax.kernels.build [--force]` builds
(rebuilds). Needs a C++17 compiler and the Eigen 3 headers (Debian: g++
libeigen3-dev; scripts/setup.sh installs both). Library directory:
`$PERFORMER_JAX_KERNEL_DIR`, default `~/.cache/performer_jax/kernels`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

SOURCE = pathlib.Path(__file__).with_name("causal_favor_cpu.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
         "-DNDEBUG")
EIGEN_CANDIDATES = ("/usr/include/eigen3", "/usr/local/include/eigen3")


class KernelBuildError(RuntimeError):
  """The kernel could not be compiled; the message says what is missing."""


def kernel_dir() -> pathlib.Path:
  default = pathlib.Path.home() / ".cache" / "performer_jax" / "kernels"
  return pathlib.Path(os.environ.get("PERFORMER_JAX_KERNEL_DIR", default))


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return os.uname().machine


def library_path() -> pathlib.Path:
  """Where the build for this source, jaxlib and CPU lives (may not exist)."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(),
               jaxlib.__version__.encode(), _cpu_flags().encode()):
    digest.update(part)
  return kernel_dir() / f"{SOURCE.stem}-{digest.hexdigest()[:16]}.so"


def _eigen_include() -> str:
  for path in filter(None, (os.environ.get("EIGEN_INCLUDE_DIR"),
                            *EIGEN_CANDIDATES)):
    if os.path.isfile(os.path.join(path, "Eigen", "Core")):
      return path
  raise KernelBuildError(
      "Eigen 3 headers not found (looked for Eigen/Core under "
      f"{', '.join(EIGEN_CANDIDATES)} and $EIGEN_INCLUDE_DIR); install them "
      "with `apt-get install libeigen3-dev` or set EIGEN_INCLUDE_DIR.")


def build(force: bool = False, verbose: bool = False) -> pathlib.Path:
  """Compiles the kernel library unless an up-to-date one exists."""
  import jax  # pylint: disable=g-import-not-at-top
  target = library_path()
  if target.exists() and not force:
    return target
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which(
      "c++")
  if compiler is None:
    raise KernelBuildError("no C++ compiler found (g++ or $CXX); install one "
                           "with `apt-get install g++`.")
  includes = [f"-I{jax.ffi.include_dir()}", f"-I{_eigen_include()}"]
  target.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a temporary name and rename: concurrent builds (pytest-xdist
  # workers, several hosts on one home directory) never see half a file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  cmd = [compiler, *FLAGS, *includes, str(SOURCE), "-o", tmp]
  if verbose:
    print(" ".join(cmd), file=sys.stderr)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise KernelBuildError(f"compiling {SOURCE.name} failed:\n"
                           f"{' '.join(cmd)}\n{proc.stderr[-4000:]}")
  os.replace(tmp, target)
  return target


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--force", action="store_true", help="rebuild")
  args = parser.parse_args(argv)
  try:
    path = build(force=args.force, verbose=True)
  except KernelBuildError as err:
    print(f"[kernels] {err}", file=sys.stderr)
    return 1
  print(f"[kernels] {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
