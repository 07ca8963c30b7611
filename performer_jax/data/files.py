"""Locating and opening data files (plain, gzip, bz2 or zip).

Compression is detected from the file's magic number, not its name, so a
gzipped file without the `.gz` suffix still reads correctly.

The embedded default datasets live in system folders (Debian packages) or in
the data directory `$PERFORMER_DATA_DIR`, default `~/.cache/performer_jax`;
`bash scripts/setup_data.sh` fills both.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import pathlib
import zipfile
from typing import BinaryIO

DATA_DIR_ENV = "PERFORMER_DATA_DIR"
SETUP_COMMAND = "bash scripts/setup_data.sh"

_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_ZIP_MAGIC = b"PK\x03\x04"


def data_dir() -> pathlib.Path:
  """The folder holding downloaded default data (read from the environment)."""
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "performer_jax"


def require_file(path: str | os.PathLike[str], provider: str) -> pathlib.Path:
  """Returns `path` as a Path, or raises FileNotFoundError naming its provider.

  Args:
    path: the file that must exist.
    provider: how a user gets the file, e.g. "the Debian package
      mmseqs2-examples (run `bash scripts/setup_data.sh`)".
  """
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    what = "is a directory, not a file" if p.is_dir() else "not found"
    raise FileNotFoundError(f"data file {str(p)!r} {what}; it is provided by "
                            f"{provider}")
  return p


def compression_of(path: str | os.PathLike[str]) -> str:
  """Returns "gzip", "bz2", "zip" or "none" from the file's first bytes."""
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(_GZIP_MAGIC):
    return "gzip"
  if head.startswith(_BZ2_MAGIC):
    return "bz2"
  if head.startswith(_ZIP_MAGIC):
    return "zip"
  return "none"


def open_binary(path: str | os.PathLike[str],
                member: str | None = None) -> BinaryIO:
  """Opens a file for binary reading, decompressing gzip/bz2 transparently.

  Args:
    path: the file.
    member: for zip files (e.g. a wheel or enwik8.zip), the member to read;
      None reads the only member and fails if there are several.

  Returns:
    A readable binary file object; the caller closes it.
  """
  kind = compression_of(path)
  if kind == "gzip":
    return gzip.open(path, "rb")
  if kind == "bz2":
    return bz2.open(path, "rb")
  if kind == "zip":
    zf = zipfile.ZipFile(path)
    names = [n for n in zf.namelist() if not n.endswith("/")]
    if member is None:
      if len(names) != 1:
        zf.close()
        raise ValueError(f"{path}: zip archive holds {len(names)} files; "
                         "name the one to read")
      member = names[0]
    if member not in names:
      zf.close()
      raise ValueError(f"{path}: zip archive has no member {member!r}")
    data = zf.read(member)
    zf.close()
    if data.startswith(_BZ2_MAGIC):
      return bz2.open(io.BytesIO(data), "rb")
    if data.startswith(_GZIP_MAGIC):
      return gzip.open(io.BytesIO(data), "rb")
    return io.BytesIO(data)
  if member is not None:
    raise ValueError(f"{path} is not a zip archive, cannot read member "
                     f"{member!r}")
  return open(path, "rb")


def read_all(path: str | os.PathLike[str], member: str | None = None) -> bytes:
  """Reads a whole (possibly compressed) file; errors name the file."""
  try:
    with open_binary(path, member) as f:
      return f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot decompress/read: {e}") from e
