"""Prepared datasets: the on-disk format that training reads at any scale.

`performer-data prepare` (prepare.py) converts raw data once into a directory

  DIR/manifest.json                 what is in it (below), written last
  DIR/<split>/shard-NNNNN.tokens    sequences: the records' bytes, back to back
  DIR/<split>/shard-NNNNN.index     int64 [n + 1]: record r is tokens[i_r:i_r+1]
  DIR/<split>/shard-NNNNN.images    images: uint8 [n, H, W, C]

Why this format (the Megatron/MaxText style of memory-mapped token and
offset arrays, not ArrayRecord): records are variable-length byte strings of
a tiny alphabet, so raw bytes plus an offset index are the most compact form,
need no decoding, and give O(1) random access by record number; a reader
fetches exactly the bytes of the records it uses. Readers use `os.pread`
rather than `mmap`, so a process's resident memory does not grow with the
pages it has touched, whatever the dataset's size.

Sequences are stored as their source bytes: amino-acid letters for proteins
(upper case, validated), raw bytes for text; tasks map them to token ids.
The manifest records the format version, the inputs (paths, sizes, mtimes)
and a SHA-256 of every piece read, each split's shards with their record and
byte counts and SHA-256, length statistics, unigram byte counts (so no task
scans the data to get its baseline), the split rule and the records skipped
as invalid. A directory without a manifest, or whose files disagree with it,
is refused with an error that says what to run.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

FORMAT = "performer-jax prepared dataset"
VERSION = 1
MANIFEST = "manifest.json"
INDEX_DTYPE = np.dtype("<i8")


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


class _Shards:
  """The shards of one split, opened lazily in each process (picklable)."""

  def __init__(self, root: str | os.PathLike[str], split: str, suffix: str,
               record_bytes: int | None = None):
    self.root = pathlib.Path(root)
    self.split = split
    self.manifest = read_manifest(root)
    info = split_info(self.manifest, root, split)
    self.info = info
    self.names = [s["name"] for s in info["shards"]]
    counts = np.array([s["records"] for s in info["shards"]], np.int64)
    self.starts = np.concatenate([[0], np.cumsum(counts)])
    self.suffix = suffix
    self.records_read = 0  # how many records this process has read
    for shard in info["shards"]:
      path = self._path(shard["name"], suffix)
      size = path.stat().st_size if path.exists() else -1
      want = (shard["tokens"] if record_bytes is None
              else shard["records"] * record_bytes)
      if size != want:
        raise DataError(
            f"{path} has {size} bytes, the manifest says {want}: the dataset "
            f"is damaged or incomplete; prepare it again "
            f"({prepare_hint(self.root)})")
    self._fds: dict[str, int] | None = None

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
    return int(self.starts[-1])

  def _locate(self, index: int) -> tuple[str, int]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}) of "
                       f"{self.root}/{self.split}")
    shard = int(np.searchsorted(self.starts, index, side="right")) - 1
    self.records_read += 1
    return self.names[shard], index - int(self.starts[shard])

  def _pread(self, name: str, suffix: str, size: int, offset: int) -> bytes:
    data = os.pread(self._fd(name, suffix), size, offset)
    if len(data) != size:
      raise DataError(f"{self._path(name, suffix)}: short read at byte "
                      f"{offset}; the dataset is damaged, prepare it again")
    return data


class Sequences(_Shards):
  """Random access to the records of one split: `seqs[i]` is uint8 [n]."""

  def __init__(self, root: str | os.PathLike[str], split: str = "train"):
    kind = read_manifest(root)["kind"]
    if kind != "sequences":
      raise DataError(f"{root} holds {kind}, not sequences")
    super().__init__(root, split, "tokens")

  def __getitem__(self, index: int) -> np.ndarray:
    name, local = self._locate(index)
    bounds = np.frombuffer(self._pread(name, "index", 16,
                                       local * INDEX_DTYPE.itemsize),
                           INDEX_DTYPE)
    start, end = int(bounds[0]), int(bounds[1])
    return np.frombuffer(self._pread(name, "tokens", end - start, start),
                         np.uint8)

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
    super().__init__(root, split, "images",
                     record_bytes=int(np.prod(self.shape)))

  def __getitem__(self, index: int) -> np.ndarray:
    name, local = self._locate(index)
    size = int(np.prod(self.shape))
    return np.frombuffer(self._pread(name, "images", size, local * size),
                         np.uint8).reshape(self.shape)


def byte_counts(data: np.ndarray) -> np.ndarray:
  """int64 [256] histogram of uint8 `data`, in cache-sized pieces (3x
  faster than one np.bincount over a large array)."""
  counts = np.zeros(256, np.int64)
  for start in range(0, data.size, 1 << 18):
    counts += np.bincount(data[start:start + (1 << 18)], minlength=256)
  return counts


def unigram_counts(manifest: dict[str, Any], split: str) -> np.ndarray:
  """int64 [256]: how often each byte occurs in the split."""
  return np.asarray(manifest["splits"][split]["unigram"], np.int64)
