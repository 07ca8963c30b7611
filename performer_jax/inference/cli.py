"""What the inference commands share: arguments, input files, errors.

  performer-export --workdir DIR --output model.msgpack [--step N]

`performer-generate` and `performer-score` load `--workdir` (a
performer-train workdir, or a performer-export file) and read sequences as
FASTA (first non-blank character ">"), else one per non-empty line. Errors
print one line naming the problem and exit with `performer-train`'s status
(2 for bad input).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from performer_jax import compile_cache
from performer_jax.data import files
from performer_jax.inference import loading
from performer_jax.tasks import base
from performer_jax.train.cli import ExitCode


@dataclasses.dataclass(frozen=True)
class Record:
  """One input sequence: its name and its token ids (no special tokens)."""
  name: str
  tokens: np.ndarray


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True,
                      help="a performer-train workdir, or a file written by "
                      "performer-export")
  parser.add_argument("--step", type=int, default=None,
                      help="the checkpoint to load (default: the newest)")


def load(args: argparse.Namespace) -> loading.LoadedModel:
  return loading.load(args.workdir, args.step)


def encode(io_: base.TaskIO, text: str, name: str) -> np.ndarray:
  """`text` as token ids; a ValueError names the record on bad characters."""
  try:
    tokens = io_.encode(text)
  except (ValueError, UnicodeError) as e:
    raise ValueError(f"{name}: {e}") from None
  return np.asarray(tokens, np.int32)


def _named_texts(path: str) -> Iterator[tuple[str, str]]:
  """`(name, text)` of each record, streamed (gzip and bz2 too)."""
  with io.TextIOWrapper(files.open_binary(path), encoding="utf-8",
                        errors="replace") as f:
    lines = (line.strip() for line in f)
    first = next((line for line in lines if line), None)
    if first is None:
      raise ValueError(f"{path} holds no sequence")
    if not first.startswith(">"):
      yield "line1", first
      for i, line in enumerate(lines):
        if line:
          yield f"line{i + 2}", line
      return
    name, parts, count = first, [], 1
    for line in lines:
      if line.startswith(">"):
        yield _fasta_name(name, count), "".join(parts)
        name, parts, count = line, [], count + 1
      elif line:
        parts.append(line)
    yield _fasta_name(name, count), "".join(parts)


def _fasta_name(header: str, count: int) -> str:
  words = header[1:].split()
  return words[0] if words else f"record{count}"


def iter_records(path: str, io_: base.TaskIO) -> Iterator[Record]:
  """The sequences of a FASTA or one-per-line file, encoded, in order.
  Streams the file: memory does not grow with its size."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"input file {path} does not exist")
  for name, text in _named_texts(path):
    if not text:
      raise ValueError(f"{path}: record {name} is empty")
    yield Record(name, encode(io_, text, f"{path}: {name}"))


def in_batches(records: Iterable[Record], size: int
               ) -> Iterator[list[Record]]:
  batch = []
  for record in records:
    batch.append(record)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def batches(count: int, size: int) -> Iterator[list[int]]:
  """Indices 0..count-1 in consecutive lists of at most `size`."""
  for start in range(0, count, size):
    yield list(range(start, min(start + size, count)))


def check_output(path: str, flag: str) -> None:
  """A ValueError naming `path` when it cannot be written (its folder is
  missing, or it is a folder), before any work is done."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{flag} {path}: the folder {folder} does not exist; "
                     "create it first")
  if os.path.isdir(path):
    raise ValueError(f"{flag} {path} is a folder; give a file name")


def run(main: Callable[[Sequence[str] | None], None],
        argv: Sequence[str] | None) -> None:
  """Runs a command; bad input exits 2 with one line on stderr."""
  compile_cache.enable()
  try:
    main(argv)
  except (ValueError, OSError, TypeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)


def _export(argv: Sequence[str] | None) -> None:
  parser = argparse.ArgumentParser(
      prog="performer-export",
      description="Write a trained model (config, parameters, random "
      "features; no optimizer state) into one file that load_model reads.")
  add_model_arguments(parser)
  parser.add_argument("--output", required=True, help="the file to write")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace --output if it exists")
  args = parser.parse_args(argv)
  check_output(args.output, "--output")
  step = loading.export(args.workdir, args.output, args.step,
                        overwrite=args.overwrite)
  print(f"wrote step {step} of {args.workdir} to {args.output} "
        f"({os.path.getsize(args.output) / 2 ** 20:.1f} MiB)")


def export_main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-export`."""
  run(_export, argv)
