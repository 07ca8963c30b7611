"""Prepared datasets: the on-disk format that training reads at any scale.

  DIR/manifest.json               what is in it, written last
  DIR/<split>/shard-NNNNN.tokens  sequences: the records' bytes, back to back
  DIR/<split>/shard-NNNNN.index   int64 i [n+1]: record r = tokens[i_r:i_{r+1}]
  DIR/<split>/shard-NNNNN.images  images: uint8 [n, H, W, C]

Written once by `performer-data prepare` (prepare.py). Records are source
bytes of a tiny alphabet (upper-case amino acids, raw text; tasks map them
to ids): bytes plus offsets are the most compact form, need no decoding and
give O(1) random access. Readers use `os.pread`, not `mmap`, so resident
memory does not grow with the pages touched. The manifest (format version,
inputs, each shard's counts and SHA-256s `sha256` and `index_sha256`, length
and unigram statistics, split rule, skipped records) must match the files;
each read checks its record's offsets first.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import pathlib
import struct
from typing import Any, Iterator

import numpy as np

FORMAT = "performer-jax prepared dataset"
VERSION = 1
MANIFEST = "manifest.json"
INDEX_DTYPE = np.dtype("<i8")
_BOUNDS = struct.Struct("<qq")  # two neighbouring INDEX_DTYPE offsets
# Collectors of the dataset directories opened (see `opened`).
_OPENED: list[set[str]] = []


class DataError(ValueError):
  """A dataset that cannot be used; the message names it and the fix."""


def prepare_hint(root: str | os.PathLike[str]) -> str:
  return (f"run `performer-data prepare --format <fasta|text|bytes|blastdb|"
          f"imagenet_npz|cifar|idx> --input <file or glob> --output {root}`")


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
  """The manifest of a complete dataset of this version; DataError else."""
  root = pathlib.Path(root)
  path = root / MANIFEST
  if not path.is_file():
    what = ("does not exist" if not root.exists() else
            "is not a prepared dataset (it has no manifest.json; an "
            "interrupted prepare leaves none)")
    raise DataError(f"dataset directory {str(root)!r} {what}: "
                    f"{prepare_hint(root)}")
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise DataError(f"{path} cannot be read ({e}): {prepare_hint(root)}"
                    ) from None
  if manifest.get("format") != FORMAT:
    raise DataError(f"{path} is not a {FORMAT} manifest: "
                    f"{prepare_hint(root)}")
  if manifest.get("version") != VERSION:
    raise DataError(f"{root} was prepared with format version "
                    f"{manifest.get('version')}, this performer-jax reads "
                    f"version {VERSION}: prepare it again ({prepare_hint(root)})"
                    )
  return manifest


def split_info(manifest: dict[str, Any], root, split: str) -> dict[str, Any]:
  splits = manifest["splits"]
  if split not in splits:
    raise DataError(f"{root} has no split {split!r}; it has {sorted(splits)}")
  return splits[split]


def shard_files(manifest: dict[str, Any], shard: dict[str, Any]
                ) -> dict[str, int]:
  """suffix -> size in bytes of each file of `shard` (a manifest entry)."""
  if manifest["kind"] == "images":
    return {"images": shard["records"] * int(np.prod(manifest["image_shape"]))}
  return {"tokens": shard["tokens"],
          "index": (shard["records"] + 1) * INDEX_DTYPE.itemsize}


def damaged(root: str | os.PathLike[str]) -> str:
  """The end of every message about a damaged dataset: what to run."""
  return (f"the dataset is damaged or incomplete; prepare it again "
          f"({prepare_hint(root)})")


@contextlib.contextmanager
def opened() -> Iterator[set[str]]:
  """Collects the directories of the datasets opened inside the block (the
  trainer verifies those a task opened, `data.verify`)."""
  roots: set[str] = set()
  _OPENED.append(roots)
  try:
    yield roots
  finally:
    _OPENED.remove(roots)


class _Shards:
  """The shards of one split, opened lazily in each process (picklable)."""

  def __init__(self, root: str | os.PathLike[str], split: str, suffix: str):
    self.root = pathlib.Path(root)
    self.split = split
    self.manifest = read_manifest(root)
    info = split_info(self.manifest, root, split)
    self.info = info
    self.names = [s["name"] for s in info["shards"]]
    counts = np.array([s["records"] for s in info["shards"]], np.int64)
    self.starts = np.concatenate([[0], np.cumsum(counts)])
    # Python ints for `_locate`: bisect on a list beats numpy per record.
    self._first, self._records = self.starts[:-1].tolist(), int(counts.sum())
    self.suffix = suffix
    # Bytes of each shard's records file (tokens or images), for the checks.
    self.sizes = [int(s["tokens"]) for s in info["shards"]]
    self.records_read = 0  # how many records this process has read
    self._fds: dict[str, int] | None = None
    for shard in info["shards"]:
      for file_suffix, want in shard_files(self.manifest, shard).items():
        path = self._path(shard["name"], file_suffix)
        try:
          size = path.stat().st_size
        except FileNotFoundError:
          raise DataError(f"{path} is missing: {damaged(self.root)}"
                          ) from None
        if size != want:
          raise DataError(f"{path} has {size} bytes, the manifest says "
                          f"{want}: {damaged(self.root)}")
    for roots in _OPENED:
      roots.add(str(self.root))

  def _path(self, name: str, suffix: str) -> pathlib.Path:
    return self.root / self.split / f"{name}.{suffix}"

  def _fd(self, name: str, suffix: str) -> int:
    if self._fds is None:
      self._fds = {}
    key = f"{name}.{suffix}"
    if key not in self._fds:
      self._fds[key] = os.open(self._path(name, suffix), os.O_RDONLY)
    return self._fds[key]

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fds"] = None  # file descriptors do not travel to workers
    return state

  def __len__(self) -> int:
    return self._records

  def _locate(self, index: int) -> tuple[int, int]:
    """Record `index` of the split -> (shard number, record in the shard)."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}) of "
                       f"{self.root}/{self.split}")
    shard = bisect.bisect_right(self._first, index) - 1
    self.records_read += 1
    return shard, index - self._first[shard]

  def _pread(self, name: str, suffix: str, size: int, offset: int) -> bytes:
    data = os.pread(self._fd(name, suffix), size, offset)
    if len(data) != size:
      raise DataError(f"{self._path(name, suffix)}: short read at byte "
                      f"{offset}: {damaged(self.root)}")
    return data


class Sequences(_Shards):
  """Random access to the records of one split: `seqs[i]` is uint8 [n]."""

  def __init__(self, root: str | os.PathLike[str], split: str = "train"):
    kind = read_manifest(root)["kind"]
    if kind != "sequences":
      raise DataError(f"{root} holds {kind}, not sequences")
    super().__init__(root, split, "tokens")
    for shard, name in enumerate(self.names):  # the ends of each index
      records = int(self.starts[shard + 1] - self.starts[shard])
      first = _BOUNDS.unpack(self._pread(name, "index", 16, 0))[0]
      last = _BOUNDS.unpack(self._pread(
          name, "index", 16, (records - 1) * INDEX_DTYPE.itemsize))[1]
      if (first, last) != (0, self.sizes[shard]):
        raise DataError(
            f"{self._path(name, 'index')} runs from offset {first} to "
            f"{last}, the manifest says 0 to {self.sizes[shard]}: "
            f"{damaged(self.root)}")

  def __getitem__(self, index: int) -> np.ndarray:
    shard, local = self._locate(index)
    name = self.names[shard]
    start, end = _BOUNDS.unpack(self._pread(name, "index", 16,
                                            local * INDEX_DTYPE.itemsize))
    if not 0 <= start <= end <= self.sizes[shard]:
      self._bad_offsets(shard, local, start, end)
    return np.frombuffer(self._pread(name, "tokens", end - start, start),
                         np.uint8)

  def _bad_offsets(self, shard: int, local: int, start: int, end: int):
    name = self.names[shard]
    raise DataError(
        f"{self._path(name, 'index')}: record {local} has offsets [{start}, "
        f"{end}), not an ordered range inside the {self.sizes[shard]} bytes "
        f"of {name}.tokens: {damaged(self.root)}; `performer-data verify "
        f"{self.root}` checks every shard")

  @property
  def num_tokens(self) -> int:
    return int(self.info["tokens"])

  def window(self, start: int, size: int) -> np.ndarray:
    """Bytes [start, start + size) of the split's concatenated records (the
    text tasks read one long stream), uint8."""
    out = np.empty(size, np.uint8)
    done = 0
    offset = start
    for shard in self.info["shards"]:
      if offset >= shard["tokens"]:
        offset -= shard["tokens"]
        continue
      take = min(size - done, shard["tokens"] - offset)
      out[done:done + take] = np.frombuffer(
          self._pread(shard["name"], "tokens", take, offset), np.uint8)
      done += take
      offset = 0
      if done == size:
        return out
    raise IndexError(f"bytes [{start}, {start + size}) exceed the "
                     f"{self.num_tokens} bytes of {self.root}/{self.split}")


class Images(_Shards):
  """Random access to the images of one split: `images[i]` is uint8
  [H, W, C]."""

  def __init__(self, root: str | os.PathLike[str], split: str = "all"):
    manifest = read_manifest(root)
    if manifest["kind"] != "images":
      raise DataError(f"{root} holds {manifest['kind']}, not images")
    self.shape = tuple(manifest["image_shape"])
    super().__init__(root, split, "images")

  def __getitem__(self, index: int) -> np.ndarray:
    shard, local = self._locate(index)
    size = int(np.prod(self.shape))
    return np.frombuffer(self._pread(self.names[shard], "images", size,
                                     local * size),
                         np.uint8).reshape(self.shape)


def byte_counts(data: np.ndarray) -> np.ndarray:
  """int64 [256] histogram of uint8 `data`, in cache-sized pieces (faster
  than one np.bincount over a large array: docs/benchmarks.md)."""
  counts = np.zeros(256, np.int64)
  for start in range(0, data.size, 1 << 18):
    counts += np.bincount(data[start:start + (1 << 18)], minlength=256)
  return counts


def unigram_counts(manifest: dict[str, Any], split: str) -> np.ndarray:
  """int64 [256]: how often each byte occurs in the split."""
  return np.asarray(manifest["splits"][split]["unigram"], np.int64)
