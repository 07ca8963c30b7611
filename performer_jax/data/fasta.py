"""FASTA protein reader (plain or gzipped), e.g. TrEMBL, UniRef50, mmseqs2.

Yields `(header, sequence)` with the header without its '>' and the sequence
upper-cased, joined over lines, and with one trailing '*' (stop marker, as in
translated `.faa` files) removed.

Malformed input, by case:
  * sequence data before the first '>' header: always a ValueError (the file
    is most likely not FASTA at all, so nothing after it can be trusted);
  * a record with a character outside the 25-letter amino-acid alphabet
    (20 standard + ambiguous/rare B Z X U O; e.g. 'J', digits, or a '*' that
    is not the last character): skipped and counted;
  * a record with an empty sequence: skipped and counted.
With `strict=True` the skipped cases raise ValueError instead. Every error
names the file and the 1-based record number (and line for structure errors).
Skips are reported once iteration ends: `reader.report` holds the counts and
a warning is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterator

from performer_jax.data import files

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
AMINO_ACIDS = STANDARD_AMINO_ACIDS + "BZXUO"
_VALID_BYTES = frozenset(AMINO_ACIDS.encode())
_MAX_EXAMPLES = 5
_USER_PROVIDER = "you: pass the path of a local FASTA file"


@dataclasses.dataclass
class FastaReport:
  """What a pass over a FASTA file found.

  Attributes:
    path: the file.
    num_records: records yielded.
    num_residues: residues in the yielded records.
    skipped_invalid: records skipped for characters outside the alphabet.
    skipped_empty: records skipped for an empty sequence.
    examples: the first few skip reasons, for the log.
  """

  path: str
  num_records: int = 0
  num_residues: int = 0
  skipped_invalid: int = 0
  skipped_empty: int = 0
  examples: list[str] = dataclasses.field(default_factory=list)

  @property
  def num_skipped(self) -> int:
    return self.skipped_invalid + self.skipped_empty

  def summary(self) -> str:
    text = (f"{self.path}: read {self.num_records} records "
            f"({self.num_residues} residues); skipped "
            f"{self.skipped_invalid} with invalid characters and "
            f"{self.skipped_empty} empty")
    if self.examples:
      text += "; e.g. " + "; ".join(self.examples)
    return text


class FastaReader:
  """Iterable over `(header, sequence)` of one FASTA file.

  Args:
    path: the FASTA file, gzipped or not (detected from its content).
    strict: raise ValueError on invalid or empty records instead of skipping.
    provider: who provides the file, named in the error if it is missing.
  """

  def __init__(self, path: str | os.PathLike[str], *, strict: bool = False,
               provider: str = _USER_PROVIDER):
    self.path = files.require_file(path, provider)
    self.strict = strict
    self.report = FastaReport(path=str(self.path))

  def __iter__(self) -> Iterator[tuple[str, str]]:
    self.report = FastaReport(path=str(self.path))
    header: str | None = None
    chunks: list[bytes] = []
    record = 0
    with files.open_binary(self.path) as f:
      for lineno, raw in enumerate(self._lines(f), start=1):
        line = raw.strip()
        if not line:
          continue
        if line.startswith(b">"):
          if header is not None:
            seq = self._finish(record, header, chunks)
            if seq is not None:
              yield header, seq
          record += 1
          header = line[1:].decode("utf-8", errors="replace").strip()
          chunks = []
        elif header is None:
          raise ValueError(
              f"{self.path}: line {lineno}: sequence data before the first "
              "'>' header (record 0); is this a FASTA file?")
        else:
          chunks.append(line)
    if header is not None:
      seq = self._finish(record, header, chunks)
      if seq is not None:
        yield header, seq
    if self.report.num_records == 0:
      raise ValueError(f"{self.path}: no valid FASTA records "
                       f"({self.report.summary()})")
    if self.report.num_skipped:
      logging.warning("FASTA %s", self.report.summary())

  def _lines(self, f) -> Iterator[bytes]:
    """The file's lines; decompression errors name the file."""
    try:
      yield from f
    except (OSError, EOFError) as e:
      raise ValueError(f"{self.path}: cannot read/decompress: {e}") from e

  def _finish(self, record: int, header: str,
              chunks: list[bytes]) -> str | None:
    """Validates one record; returns its sequence or None when skipped."""
    seq = b"".join(chunks).upper()
    if seq.endswith(b"*"):
      seq = seq[:-1]
    where = f"{self.path}: record {record} ({header[:60]!r})"
    if not seq:
      self._reject(where + ": empty sequence", "empty")
      return None
    bad = seq.translate(None, bytes(_VALID_BYTES))
    if bad:
      char = chr(bad[0])
      self._reject(f"{where}: invalid residue {char!r} at position "
                   f"{seq.index(bad[:1])}; allowed: {AMINO_ACIDS}", "invalid")
      return None
    self.report.num_records += 1
    self.report.num_residues += len(seq)
    return seq.decode("ascii")

  def _reject(self, message: str, kind: str) -> None:
    if self.strict:
      raise ValueError(message + " (strict mode)")
    if kind == "empty":
      self.report.skipped_empty += 1
    else:
      self.report.skipped_invalid += 1
    if len(self.report.examples) < _MAX_EXAMPLES:
      self.report.examples.append(message)


def read_fasta(path: str | os.PathLike[str], *, strict: bool = False,
               provider: str = _USER_PROVIDER
               ) -> tuple[list[tuple[str, str]], FastaReport]:
  """Reads a whole FASTA file; returns the records and the skip report."""
  reader = FastaReader(path, strict=strict, provider=provider)
  records = list(reader)
  return records, reader.report
