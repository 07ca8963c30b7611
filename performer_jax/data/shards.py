"""The workers of `prepare`: one piece of input -> its shards.

A worker parses one input (or byte range) in bounded memory and writes one
shard per split: the records' bytes back to back and the int64 offsets
(dataset.py's format), with their SHA-256, byte counts and length range,
which `prepare` gathers into the manifest.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from performer_jax.data import dataset as prepared
from performer_jax.data import files
from performer_jax.data import sequence_formats as seqfmt

ENWIK8_BYTES = 10 ** 8
HASH_SPACE = 1 << 32


class ShardWriter:
  """Writes one piece's records of one split: tokens, and the offsets."""

  def __init__(self, directory: str, name: str):
    os.makedirs(directory, exist_ok=True)
    self.name = name
    self.tokens = open(os.path.join(directory, f"{name}.tokens"), "wb")
    self.index = open(os.path.join(directory, f"{name}.index"), "wb")
    self.digest = hashlib.sha256()  # of the tokens, as they are written
    self.index_digest = hashlib.sha256()
    self.append_offsets(np.zeros(1, prepared.INDEX_DTYPE))
    self.records = 0
    self.size = 0
    self.unigram = np.zeros(256, np.int64)
    self.length_min, self.length_max = None, 0

  def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
    if not lengths.size:
      return
    self.append(tokens)
    ends = self.size + np.cumsum(lengths)
    self.append_offsets(ends)
    self.size = int(ends[-1])
    self.records += int(lengths.size)
    self.unigram += prepared.byte_counts(tokens)
    low, high = int(lengths.min()), int(lengths.max())
    self.length_min = low if self.length_min is None else min(
        self.length_min, low)
    self.length_max = max(self.length_max, high)

  def append(self, tokens: np.ndarray) -> None:
    """Writes token bytes (the caller keeps the index in step)."""
    data = tokens.tobytes()
    self.tokens.write(data)
    self.digest.update(data)

  def append_offsets(self, ends: np.ndarray) -> None:
    """Writes index entries (the caller keeps the tokens in step)."""
    data = ends.astype(prepared.INDEX_DTYPE).tobytes()
    self.index.write(data)
    self.index_digest.update(data)

  def close(self) -> dict[str, Any]:
    self.tokens.close()
    self.index.close()
    return {"name": self.name, "records": self.records, "tokens": self.size,
            "sha256": self.digest.hexdigest(),
            "index_sha256": self.index_digest.hexdigest(),
            "unigram": self.unigram.tolist(),
            "length_min": self.length_min or 0,
            "length_max": self.length_max}


def split_of(hashes: np.ndarray, heldout_fraction: float) -> np.ndarray:
  return hashes.astype(np.float64) < heldout_fraction * HASH_SPACE


def sequence_piece(task: dict[str, Any]) -> dict[str, Any]:
  """Worker: one piece of a fasta/blastdb input -> a shard per split."""
  rejects = seqfmt.Rejects(task["skip_invalid"])
  fraction = task["heldout_fraction"]
  writers = {split: ShardWriter(os.path.join(task["tmp"], split),
                                 task["name"])
             for split in (("train", "heldout") if fraction else ("train",))}
  digest = hashlib.sha256()
  path = task["path"]
  if task["format"] == "blastdb":
    db = seqfmt.BlastDb.open(path)
    blocks = seqfmt.blast_blocks(db, task["start"], task["end"], rejects,
                                 with_ids=bool(fraction))
    digest.update(f"{path}:{task['start']}:{task['end']}".encode())
    stream = None
  else:
    stream = files.open_binary(path)
    if task["start"]:
      stream.seek(task["start"])
    blocks = seqfmt.fasta_blocks(_Hashing(stream, digest), path,
                                 task["start"], task["end"], rejects,
                                 with_ids=bool(fraction))
  exclude = task["exclude"]
  excluded = 0
  try:
    for block in blocks:
      if exclude:
        block, dropped = drop_excluded(block, exclude)
        excluded += dropped
      held = (split_of(block.id_hashes, fraction) if fraction
              else np.zeros(block.lengths.shape, bool))
      record_of_byte = np.repeat(held, block.lengths)
      writers["train"].write(block.tokens[~record_of_byte],
                             block.lengths[~held])
      if fraction:
        writers["heldout"].write(block.tokens[record_of_byte],
                                 block.lengths[held])
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read or decompress: {e}") from e
  finally:
    if stream is not None:
      stream.close()
  return {"shards": {s: w.close() for s, w in writers.items()},
          "skipped": rejects.count, "examples": rejects.examples,
          "excluded": excluded, "sha256": digest.hexdigest(),
          "piece": task["piece"]}


def sequence_digest(tokens: np.ndarray) -> bytes:
  return hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()


def drop_excluded(block: seqfmt.Block, exclude: frozenset[bytes]
                   ) -> tuple[seqfmt.Block, int]:
  """The block without the records whose exact sequence is excluded."""
  ends = np.cumsum(block.lengths)
  starts = ends - block.lengths
  keep = np.fromiter(
      (sequence_digest(block.tokens[a:b]) not in exclude
       for a, b in zip(starts, ends)), bool, block.lengths.size)
  if keep.all():
    return block, 0
  return seqfmt.Block(block.tokens[np.repeat(keep, block.lengths)],
                      block.lengths[keep], block.id_hashes[keep],
                      block.offsets[keep]), int((~keep).sum())


class _Hashing:
  """A read-only stream that hashes what is read through it."""

  def __init__(self, stream, digest):
    self.stream, self.digest = stream, digest

  def read(self, size: int = -1) -> bytes:
    data = self.stream.read(size)
    self.digest.update(data)
    return data


def text_pieces(paths, fmt, tmp) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Concatenates the inputs and cuts the stream into train/valid/test."""
  digest = hashlib.sha256()
  stream_path = os.path.join(tmp, "stream.bin")
  total = 0
  with open(stream_path, "wb") as out:
    for path in paths:
      try:
        with (files.open_binary(path) if fmt == "text"
              else open(path, "rb")) as f:
          for chunk in seqfmt.byte_blocks(f):
            digest.update(chunk.tobytes())
            out.write(chunk.tobytes())
            total += chunk.size
      except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read or decompress: {e}") from e
  if total < 3:
    raise ValueError(f"{paths}: {total} bytes is too little text to split")
  if total == ENWIK8_BYTES:
    cuts, rule = [90 * 10 ** 6, 95 * 10 ** 6], "enwik8: 90M/5M/5M bytes"
  else:  # valid and test get floor(5% of the bytes) each, train the rest
    small = int(0.05 * total)
    cuts = [total - 2 * small, total - small]
    rule = "by position: 90% / 5% / 5% of the bytes"
  bounds = dict(zip(("train", "valid", "test"),
                    zip([0] + cuts, cuts + [total])))
  shards = {}
  with open(stream_path, "rb") as f:
    for split, (lo, hi) in bounds.items():
      writer = ShardWriter(os.path.join(tmp, split), "shard-00000")
      f.seek(lo)
      left = hi - lo
      while left:  # one record: the whole split, written block by block
        chunk = np.frombuffer(f.read(min(left, seqfmt.BLOCK_BYTES)),
                              np.uint8)
        left -= chunk.size
        writer.append(chunk)
        writer.unigram += prepared.byte_counts(chunk)
      writer.append_offsets(np.array([hi - lo]))
      writer.records, writer.size = 1, hi - lo
      writer.length_min = writer.length_max = hi - lo
      shards[split] = [writer.close()]
  os.remove(stream_path)
  return [{"shards": {s: v[0] for s, v in shards.items()}, "skipped": 0,
           "examples": [], "sha256": digest.hexdigest(), "piece": 0}], {
               "rule": rule, "bytes": total}
