"""Parsing sequence inputs (FASTA, BLAST v4 protein databases, text and
bytes) in bounded-memory blocks, for `prepare`.

Every reader yields `Block`s: the records of a stretch of input as one
uint8 array of bytes back to back, their lengths, a 32-bit hash of each
record's identifier (for splits that survive re-preparation) and the byte
offset of each record in the input (for error messages). FASTA blocks are
parsed with C-speed bytes methods, not line by line (throughput:
docs/benchmarks.md); an uncompressed file is cut into byte ranges that
workers parse in parallel (a range owns the records whose '>' lies in it).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from typing import BinaryIO, Iterator

import numpy as np

from performer_jax.data import fasta

BLOCK_BYTES = 16 << 20
_STAR = ord("*")
_VALID = np.zeros(256, bool)
_VALID[np.frombuffer(fasta.AMINO_ACIDS.encode(), np.uint8)] = True
# BLAST databases store residues in the NCBIstdaa code.
NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"
_FROM_NCBISTDAA = np.zeros(256, np.uint8)
_FROM_NCBISTDAA[:len(NCBISTDAA)] = np.frombuffer(NCBISTDAA.encode(), np.uint8)


@dataclasses.dataclass
class Block:
  """Records of one stretch of input (lengths[i] bytes each, in order)."""
  tokens: np.ndarray    # uint8 [sum(lengths)]
  lengths: np.ndarray   # int64 [n]
  id_hashes: np.ndarray  # uint32 [n]
  offsets: np.ndarray   # int64 [n], byte offset of each record in the input


class Rejects:
  """Invalid records: raise at the first one, or skip and count them."""

  def __init__(self, skip_invalid: bool):
    self.skip_invalid = skip_invalid
    self.count = 0
    self.examples: list[str] = []

  def reject(self, message: str) -> None:
    if not self.skip_invalid:
      raise ValueError(message + "; fix the record, or pass --skip-invalid "
                       "to skip and count such records")
    self.count += 1
    if len(self.examples) < 5:
      self.examples.append(message)


_UPPER_TABLE = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz",
                               b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BLANKS = b"\n\r\t "
_VALID_BYTES = fasta.AMINO_ACIDS.encode()


def parse_fasta(data: bytes, base: int, path: str, rejects: Rejects,
                with_ids: bool) -> Block:
  """The records of `data`, which holds whole FASTA records (its first
  non-blank byte is a '>' at a line start, or it is blank).

  Sequences are upper-cased and joined over lines; one trailing '*' (the
  stop marker of translated .faa files) is dropped; any other character
  outside the 25-letter alphabet, or an empty sequence, makes the record
  invalid. The work runs as a few C-speed bytes operations over the whole
  block (all sequences joined by NUL), not per line or per residue; records
  are only looked at one by one when the block holds an invalid one.
  """
  first = data.find(b">")
  lead = data if first < 0 else data[:first]
  if lead.strip() or (first > 0 and data[first - 1:first] != b"\n"):
    raise ValueError(f"{path}: byte {base}: sequence data before the first "
                     "'>' header; is this a FASTA file?")
  if first < 0:
    return Block(np.zeros(0, np.uint8), np.zeros(0, np.int64),
                 np.zeros(0, np.uint32), np.zeros(0, np.int64))
  records = data[first + 1:].split(b"\n>")
  parts = [r.partition(b"\n") for r in records]
  joined = b"\0".join([p[2] for p in parts]).translate(_UPPER_TABLE, _BLANKS)
  if b"*" in joined:  # the stop marker: one '*' at the end of a record
    joined = joined.replace(b"*\0", b"\0")
    joined = joined[:-1] if joined.endswith(b"*") else joined
  seqs = joined.split(b"\0")
  sizes = np.fromiter(map(len, records), np.int64, len(records)) + 2
  offsets = base + first + np.concatenate([[0], np.cumsum(sizes[:-1])])
  lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
  if len(seqs) != len(records) or (
      joined.translate(None, _VALID_BYTES + b"\0")) or not lengths.all():
    # Some record is invalid (or holds a NUL): look at them one by one.
    seqs = [p[2].translate(_UPPER_TABLE, _BLANKS).removesuffix(b"*")
            for p in parts]
    keep = _check_records(seqs, parts, offsets, path, rejects)
    seqs = [q for q, k in zip(seqs, keep) if k]
    parts = [q for q, k in zip(parts, keep) if k]
    offsets = offsets[keep]
    lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
  hashes = np.zeros(len(seqs), np.uint32)
  if with_ids:
    hashes = np.fromiter((zlib.crc32(_identifier(p[0])) for p in parts),
                         np.uint32, len(parts))
  return Block(np.frombuffer(b"".join(seqs), np.uint8), lengths, hashes,
               offsets.astype(np.int64))


def _identifier(header: bytes) -> bytes:
  ident = header.split(None, 1)
  return ident[0] if ident else b""


def _check_records(seqs, parts, offsets, path, rejects) -> np.ndarray:
  """bool [n]: which records are valid; rejects the others."""
  keep = np.ones(len(parts), bool)
  for i, (seq, part) in enumerate(zip(seqs, parts)):
    bad = seq.translate(None, _VALID_BYTES)
    if bad or not seq:
      keep[i] = False
      name = part[0].strip()[:60].decode("utf-8", "replace")
      what = (f"invalid character {chr(bad[0])!r} (allowed: "
              f"{fasta.AMINO_ACIDS})" if bad else "empty sequence")
      rejects.reject(f"{path}: byte {int(offsets[i])}: record {name!r}: "
                     f"{what}")
  return keep


def fasta_blocks(f: BinaryIO, path: str, start: int, end: int | None,
                 rejects: Rejects, with_ids: bool) -> Iterator[Block]:
  """Blocks of the records whose '>' lies in [start, end) of `f` (end None:
  to the end of the stream). `f` is positioned at `start`."""
  carry, offset = b"", start
  if start > 0:  # skip into the first record that starts in the range
    probe = b""
    while True:
      chunk = f.read(BLOCK_BYTES)
      if not chunk:
        return
      probe += chunk
      at = probe.find(b"\n>")
      if at >= 0:
        break
      keep = probe[-1:]
      offset += len(probe) - 1
      probe = keep
    carry, offset = probe[at + 1:], offset + at + 1
  done = False
  while not done:
    if end is not None and offset >= end:
      return
    chunk = f.read(BLOCK_BYTES)
    data = carry + chunk
    if not chunk:
      done = True
      cut = len(data)
    else:
      cut = data.rfind(b"\n>")
      if cut < 0:  # one record longer than a block: read on
        carry = data
        continue
      cut += 1
    if end is not None and offset + cut > end:
      # Stop at the first record that starts at or after `end`.
      limit = data.find(b"\n>", max(end - offset - 1, 0))
      if 0 <= limit < cut:
        cut, done = limit + 1, True
    block = parse_fasta(data[:cut], offset, path, rejects, with_ids)
    if block.lengths.size:
      yield block
    carry, offset = data[cut:], offset + cut


def byte_ranges(size: int, pieces: int, minimum: int = 64 << 20
                ) -> list[tuple[int, int]]:
  """Cuts [0, size) into up to `pieces` ranges of at least `minimum` bytes."""
  n = max(1, min(pieces, size // minimum))
  bounds = [size * i // n for i in range(n + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


@dataclasses.dataclass(frozen=True)
class BlastDb:
  """A BLAST v4 protein database volume: `<base>.pin/.psq/.phr`."""
  base: str
  num_seqs: int
  header_offsets_at: int  # byte position of the header offsets in .pin
  seq_offsets_at: int

  @classmethod
  def open(cls, path: str) -> "BlastDb":
    base = path[:-4] if path.endswith((".pin", ".psq", ".phr")) else path
    for ext in (".pin", ".psq", ".phr"):
      if not os.path.isfile(base + ext):
        raise FileNotFoundError(f"BLAST database {base!r}: {base + ext} not "
                                "found (a protein database has .pin, .psq "
                                "and .phr files)")
    with open(base + ".pin", "rb") as f:
      head = f.read(1 << 16)
    try:
      version, seq_type = struct.unpack(">ii", head[:8])
      at = 8
      for _ in range(2):  # title, then timestamp
        (n,) = struct.unpack(">i", head[at:at + 4])
        at += 4 + n
      (num_seqs,) = struct.unpack(">i", head[at:at + 4])
      at += 4 + 8 + 4  # total residues (little-endian int64), max length
    except struct.error:
      raise ValueError(f"{base}.pin: truncated header") from None
    if version != 4 or seq_type != 1:
      raise ValueError(f"{base}.pin: a BLAST version-4 protein database is "
                       f"needed, got version {version}, type {seq_type}")
    return cls(base, num_seqs, at, at + 4 * (num_seqs + 1))

  def offsets(self, which: str, first: int, last: int) -> np.ndarray:
    """int64 offsets [first, last] (inclusive) of headers or sequences."""
    at = self.header_offsets_at if which == "header" else self.seq_offsets_at
    with open(self.base + ".pin", "rb") as f:
      f.seek(at + 4 * first)
      raw = f.read(4 * (last - first + 1))
    return np.frombuffer(raw, ">i4").astype(np.int64)


def blast_blocks(db: BlastDb, first: int, last: int, rejects: Rejects,
                 with_ids: bool, per_block: int = 50_000) -> Iterator[Block]:
  """Blocks of sequences [first, last) of a BLAST database."""
  for lo in range(first, last, per_block):
    hi = min(last, lo + per_block)
    seq_off = db.offsets("seq", lo, hi)
    with open(db.base + ".psq", "rb") as f:
      f.seek(int(seq_off[0]))
      raw = np.frombuffer(f.read(int(seq_off[-1] - seq_off[0])), np.uint8)
    # Sequence i is [off_i, off_{i+1} - 1): a 0 byte separates sequences.
    lengths = np.diff(seq_off) - 1
    letters = _FROM_NCBISTDAA[raw]
    starts = seq_off[:-1] - seq_off[0]
    keep_byte = np.ones(raw.shape, bool)
    keep_byte[starts + lengths] = False  # the separators
    stops = (lengths > 0) & (letters[np.maximum(starts + lengths - 1, 0)]
                            == _STAR)
    keep_byte[(starts + lengths - 1)[stops]] = False  # a final stop '*'
    lengths = lengths - stops
    record_of = np.repeat(np.arange(hi - lo), lengths + stops + 1)
    residues = letters[keep_byte]
    record_kept = record_of[keep_byte]
    bad = np.zeros(hi - lo, bool)
    invalid = ~_VALID[residues]
    for rec in np.unique(record_kept[invalid]):
      bad[rec] = True
      rejects.reject(f"{db.base}.psq: sequence {lo + rec} (byte "
                     f"{int(seq_off[rec])}): invalid residue "
                     f"{chr(residues[invalid & (record_kept == rec)][0])!r}"
                     f"; allowed: {fasta.AMINO_ACIDS}")
    for rec in np.flatnonzero((lengths == 0) & ~bad):
      bad[rec] = True
      rejects.reject(f"{db.base}.psq: sequence {lo + rec}: empty sequence")
    hashes = np.zeros(hi - lo, np.uint32)
    if with_ids:  # the raw defline bytes identify the record
      hdr = db.offsets("header", lo, hi)
      with open(db.base + ".phr", "rb") as f:
        f.seek(int(hdr[0]))
        headers = f.read(int(hdr[-1] - hdr[0]))
      rel = hdr - hdr[0]
      for rec in range(hi - lo):
        hashes[rec] = zlib.crc32(headers[rel[rec]:rel[rec + 1]])
    good = ~bad
    yield Block(residues[good[record_kept]], lengths[good], hashes[good],
                seq_off[:-1][good])


def byte_blocks(f: BinaryIO) -> Iterator[np.ndarray]:
  """The bytes of a stream in blocks (text: one long record)."""
  while True:
    chunk = f.read(BLOCK_BYTES)
    if not chunk:
      return
    yield np.frombuffer(chunk, np.uint8)
