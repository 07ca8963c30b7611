"""`performer-data verify DIR`: is every shard of a prepared dataset intact?

Exit status 0: intact, 1: damaged. Compares every shard file's SHA-256 with
the manifest (dataset.py; indexes only where it records `index_sha256`) and
checks each index entry by entry (starts at 0, never decreases, ends at its
tokens file's size): this finds damage the open- and read-time checks cannot
see, such as one flipped bit. Threads stream one file each in fixed blocks
(hashlib releases the GIL); memory stays at `workers x BLOCK_BYTES`.
Training runs the same check first with `--config.data.verify=true`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import os
import sys
import time
from typing import Iterable

import numpy as np

from performer_jax.data import dataset as prepared

BLOCK_BYTES = 1 << 22  # a multiple of the index entry size


@dataclasses.dataclass(frozen=True)
class _File:
  shard: str  # "<split>/<name>"
  path: str
  size: int  # bytes, from the manifest
  sha256: str | None  # None: the manifest has no digest of this file
  tokens: int | None = None  # an index: the size of its tokens file


@dataclasses.dataclass
class Report:
  """What `verify` found: damage by shard ("<split>/<name>" -> what is
  wrong with its files), and what it read."""
  root: str
  problems: dict[str, list[str]]
  shards: int
  files: int
  bytes: int
  seconds: float

  @property
  def intact(self) -> bool:
    return not self.problems

  def summary(self) -> str:
    gb = self.bytes / 1e9
    shards = f"{self.shards} shard{'s' if self.shards != 1 else ''}"
    state = (f"all {shards} intact" if self.intact else
             f"{len(self.problems)} of {shards} damaged")
    return (f"{self.root}: {state} ({self.files} files, {gb:.3f} GB "
            f"verified in {self.seconds:.2f} s, "
            f"{gb / max(self.seconds, 1e-9):.2f} GB/s)")


def _files(root: str, manifest: dict) -> list[_File]:
  out = []
  for split, info in manifest["splits"].items():
    for shard in info["shards"]:
      sizes = prepared.shard_files(manifest, shard)
      for suffix, size in sizes.items():
        is_index = suffix == "index"
        out.append(_File(
            shard=f"{split}/{shard['name']}",
            path=os.path.join(root, split, f"{shard['name']}.{suffix}"),
            size=size,
            sha256=shard.get("index_sha256") if is_index else shard["sha256"],
            tokens=sizes["tokens"] if is_index else None))
  return out


def _read_block(f, view: memoryview) -> int:
  """Fills `view` from `f` (fewer bytes only at the end of the file)."""
  got = 0
  while got < len(view):
    n = f.readinto(view[got:])
    if not n:
      break
    got += n
  return got


def _offset_problem(offsets: np.ndarray, entry: int, previous: int,
                    tokens: int) -> str | None:
  """What is wrong with index entries `entry, entry + 1, ...` (`offsets`;
  the entry before them is `previous`), or None. Record r spans entries
  r and r + 1: from 0, never decreasing, up to `tokens`."""
  if entry == 0 and offsets[0] != 0:
    return f"it starts at offset {int(offsets[0])}, not 0"
  wrong = np.flatnonzero((np.diff(offsets, prepend=previous) < 0)
                         | (offsets > tokens))
  if not wrong.size:
    return None
  k = int(wrong[0])
  low = previous if k == 0 else int(offsets[k - 1])
  return (f"record {entry + k - 1} has offsets [{low}, "
          f"{int(offsets[k])}), not an ordered range inside the {tokens} "
          f"bytes of its tokens file")


def _check_file(file: _File) -> str | None:
  """Streams one file: its size, digest and (an index) its offsets; what is
  wrong, or None."""
  name = os.path.basename(file.path)
  try:
    return _check_open_file(file, name)
  except FileNotFoundError:
    return f"{name} is missing"
  except OSError as e:
    return f"{name} cannot be read ({e.strerror or e})"


def _check_open_file(file: _File, name: str) -> str | None:
  with open(file.path, "rb", buffering=0) as f:
    size = os.fstat(f.fileno()).st_size
    if size != file.size:
      return f"{name} has {size} bytes, the manifest says {file.size}"
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    previous, entry, bad_offsets = 0, 0, None
    while n := _read_block(f, view):
      digest.update(view[:n])
      if file.tokens is not None and bad_offsets is None:
        offsets = np.frombuffer(buffer, prepared.INDEX_DTYPE,
                                n // prepared.INDEX_DTYPE.itemsize)
        bad_offsets = _offset_problem(offsets, entry, previous, file.tokens)
        previous = int(offsets[-1])
        entry += offsets.size
    if bad_offsets is None and file.tokens is not None and (
        previous != file.tokens):
      bad_offsets = (f"it ends at offset {previous}, its tokens file has "
                     f"{file.tokens} bytes")
  problems = [bad_offsets] if bad_offsets else []
  if file.sha256 is not None and digest.hexdigest() != file.sha256:
    problems.insert(0, "SHA-256 differs from the manifest")
  return f"{name}: {'; '.join(problems)}" if problems else None


def verify(root: str | os.PathLike[str], workers: int | None = None
           ) -> Report:
  """Checks every shard of the dataset at `root` (see the module
  docstring). Raises DataError if `root` is not a dataset."""
  root = str(root)
  start = time.perf_counter()
  manifest = prepared.read_manifest(root)
  files = sorted(_files(root, manifest), key=lambda f: -f.size)
  workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
  problems: dict[str, list[str]] = {}
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for file, problem in zip(files, pool.map(_check_file, files)):
      if problem is not None:
        problems.setdefault(file.shard, []).append(problem)
  return Report(root=root, problems=dict(sorted(problems.items())),
                shards=len({f.shard for f in files}), files=len(files),
                bytes=sum(f.size for f in files),
                seconds=time.perf_counter() - start)


def damage_lines(report: Report) -> list[str]:
  """One line per damaged shard."""
  return [f"{report.root}/{shard}: {'; '.join(what)}"
          for shard, what in report.problems.items()]


def require_intact(roots: Iterable[str], workers: int | None = None
                   ) -> list[Report]:
  """Verifies each dataset; raises DataError (one line) naming the first
  damaged shard of the first damaged dataset."""
  reports = []
  for root in sorted(roots):
    report = verify(root, workers)
    if not report.intact:
      lines = damage_lines(report)
      more = f" (and {len(lines) - 1} more shards)" if len(lines) > 1 else ""
      raise prepared.DataError(f"{lines[0]}{more}: "
                               f"{prepared.damaged(root)}")
    reports.append(report)
  return reports


def add_parser(commands) -> None:
  """The `verify` subcommand of `performer-data` (prepare.main)."""
  p = commands.add_parser("verify", help=__doc__.split("\n\n")[0])
  p.add_argument("dataset", nargs="+", help="a prepared dataset directory")
  p.add_argument("--workers", type=int, default=None,
                 help="files hashed at once (default: the CPU count)")


def run(args: argparse.Namespace) -> int:
  """Prints one line per damaged shard and a summary; 0 if all intact, 1
  if any shard is damaged, 2 if a directory is not a dataset."""
  code = 0
  for root in args.dataset:
    try:
      report = verify(root, args.workers)
    except prepared.DataError as e:
      print(f"error: {e}", file=sys.stderr)
      code = max(code, 2)
      continue
    for line in damage_lines(report):
      print(f"damaged: {line}", file=sys.stderr)
    if report.intact:
      print(report.summary())
    else:
      print(f"error: {report.summary()}: {prepared.damaged(root)}",
            file=sys.stderr)
      code = max(code, 1)
  return code

