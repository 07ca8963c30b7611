"""`performer-data prepare`: raw data -> a prepared dataset (dataset.py).

Usage: README.md#data. Worker processes parse each input (or byte range of a
large uncompressed FASTA file) in bounded memory into its own shard. Output
is renamed to `--output` when complete, manifest last, so a failed run
leaves nothing that loads; rerunning does nothing, and concurrent runs take
turns under a lock file. Splits: records with identifiers go to "heldout"
when a hash of the identifier is below `--heldout-fraction` (stable under
reordering), else "train"; text and bytes are cut by position into "train",
"valid", "test" (90/5/5%); images go to one split, "all".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

from performer_jax.data import dataset as prepared
from performer_jax.data import files
from performer_jax.data import image_formats
from performer_jax.data import sequence_formats as seqfmt
from performer_jax.data import shards
from performer_jax.data import verify

SEQUENCE_FORMATS = ("fasta", "blastdb", "text", "bytes")
IMAGE_FORMATS = ("imagenet_npz", "cifar", "idx")
FORMATS = SEQUENCE_FORMATS + IMAGE_FORMATS


def expand_inputs(specs: Sequence[str], fmt: str) -> list[str]:
  """Paths from files, globs and (blastdb) database base names, in order."""
  paths = []
  for spec in specs:
    matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
    if not matches:
      raise FileNotFoundError(f"--input {spec!r} matches no file")
    for path in matches:
      if fmt == "blastdb":
        seqfmt.BlastDb.open(path)
      else:
        files.require_file(path, "you: --input must name existing files")
      paths.append(os.path.abspath(path))
  return paths


def fingerprint(paths: Sequence[str], fmt: str, options: dict[str, Any]
                ) -> dict[str, Any]:
  """What identifies a preparation: format, options, and each input's size
  and modification time."""
  stats = []
  for path in paths:
    target = path + ".psq" if fmt == "blastdb" else path
    st = os.stat(target)
    stats.append({"path": path, "size": st.st_size, "mtime": st.st_mtime})
  return {"format": fmt, "options": options, "inputs": stats}


def exclusion_set(specs: Sequence[str]) -> frozenset[bytes]:
  """Digests of every sequence of the prepared datasets or FASTA files
  `specs` (all their splits), for `--exclude`."""
  digests = set()
  for spec in specs:
    root = ensure_prepared(spec, "fasta", provider="you: --exclude")
    for split in prepared.read_manifest(root)["splits"]:
      seqs = prepared.Sequences(root, split)
      digests.update(shards.sequence_digest(seqs[i])
                     for i in range(len(seqs)))
  return frozenset(digests)


def _sequence_tasks(paths, fmt, tmp, options) -> list[dict[str, Any]]:
  tasks = []
  workers = options["workers"]
  for path in paths:
    if fmt == "blastdb":
      n = seqfmt.BlastDb.open(path).num_seqs
      ranges = [(n * i // workers, n * (i + 1) // workers)
                for i in range(workers)] if n > 200_000 else [(0, n)]
    elif files.compression_of(path) == "none":
      ranges = seqfmt.byte_ranges(os.path.getsize(path), workers)
    else:
      ranges = [(0, None)]
    for start, end in ranges:
      tasks.append({"path": path, "format": fmt, "start": start, "end": end,
                    "tmp": tmp, "piece": len(tasks),
                    "name": f"shard-{len(tasks):05d}",
                    "skip_invalid": options["skip_invalid"],
                    "heldout_fraction": options["heldout_fraction"],
                    "exclude": options["exclude_set"]})
  return tasks


def _run(worker, tasks, workers: int) -> list[dict[str, Any]]:
  """Runs `worker` over `tasks` on `workers` processes (in order)."""
  if workers <= 1 or len(tasks) <= 1:
    return [worker(t) for t in tasks]
  # spawn: the parent may hold JAX threads, which fork would copy broken.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers,
                                              mp_context=context) as pool:
    return list(pool.map(worker, tasks))


def _write_manifest(tmp, fmt, kind, finger, results, split_rule,
                    extra) -> dict[str, Any]:
  splits: dict[str, Any] = {}
  for result in results:
    for split, shard in result["shards"].items():
      entry = splits.setdefault(split, {"shards": [], "records": 0,
                                        "tokens": 0, "unigram": [0] * 256,
                                        "length_min": None, "length_max": 0})
      if not shard["records"]:
        for suffix in ("tokens", "index", "images"):
          path = os.path.join(tmp, split, f"{shard['name']}.{suffix}")
          if os.path.exists(path):
            os.remove(path)
        continue
      keys = ("name", "records", "tokens", "sha256", "index_sha256")
      entry["shards"].append({k: shard[k] for k in keys if k in shard})
      entry["records"] += shard["records"]
      entry["tokens"] += shard["tokens"]
      entry["unigram"] = [a + b for a, b in zip(entry["unigram"],
                                                 shard["unigram"])]
      low = shard["length_min"]
      entry["length_min"] = low if entry["length_min"] is None else min(
          entry["length_min"], low)
      entry["length_max"] = max(entry["length_max"], shard["length_max"])
  for split, entry in splits.items():
    entry["length_mean"] = entry["tokens"] / max(entry["records"], 1)
  skipped = sum(r["skipped"] for r in results)
  excluded = sum(r.get("excluded", 0) for r in results)
  if not any(e["records"] for e in splits.values()):
    raise ValueError(f"{[i['path'] for i in finger['inputs']]}: no valid "
                     f"records to prepare ({skipped} invalid skipped, "
                     f"{excluded} excluded as copies of --exclude records)")
  manifest = {
      "format": prepared.FORMAT, "version": prepared.VERSION,
      "kind": kind, "source_format": fmt, "fingerprint": finger,
      "pieces": [{"piece": r["piece"], "sha256": r["sha256"]}
                 for r in results],
      "splits": splits, "split_rule": split_rule,
      "skipped_invalid": skipped, "excluded": excluded,
      "skipped_examples": [e for r in results for e in r["examples"]][:5],
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
  with open(os.path.join(tmp, prepared.MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def prepare(inputs: Sequence[str], output: str, fmt: str, *,
            heldout_fraction: float = 0.0, skip_invalid: bool = False,
            exclude: Sequence[str] = (), workers: int | None = None,
            verbose: bool = False) -> dict[str, Any]:
  """Prepares `inputs` into `output` (see the module docstring); returns the
  manifest. `exclude`: FASTA files or prepared datasets (e.g. an eval set)
  whose exact sequences are left out (fasta, blastdb). Raises ValueError /
  FileNotFoundError naming the problem."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
  if not 0.0 <= heldout_fraction < 1.0:
    raise ValueError(f"--heldout-fraction must be in [0, 1), got "
                     f"{heldout_fraction}")
  paths = expand_inputs(inputs, fmt)
  workers = max(1, workers or os.cpu_count() or 1)
  if exclude and fmt not in ("fasta", "blastdb"):
    raise ValueError("--exclude applies to the fasta and blastdb formats")
  options = {"heldout_fraction": float(heldout_fraction),
             "skip_invalid": bool(skip_invalid)}
  if exclude:
    exclude_paths = [os.path.abspath(p) for p in exclude]
    options["exclude"] = fingerprint(
        [p for p in exclude_paths if not os.path.isdir(p)], "fasta", {})
    options["exclude"]["datasets"] = [p for p in exclude_paths
                                      if os.path.isdir(p)]
  finger = fingerprint(paths, fmt, options)
  output = os.path.abspath(output)
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  # Processes that prepare the same output (the hosts of one run) take
  # turns: the first prepares, the others then find its manifest.
  with _exclusive(os.path.join(parent, f".{os.path.basename(output)}.lock")):
    return _prepare_locked(paths, output, fmt, finger, options, workers,
                           exclude, verbose)


@contextlib.contextmanager
def _exclusive(lock_path: str):
  """Holds `lock_path` locked, and removes it when done (also after a
  failure), so no lock file stays beside the output. A process that locked
  a file another one has since removed retries on a fresh one."""
  while True:
    with open(lock_path, "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        current = os.stat(lock_path).st_ino
      except FileNotFoundError:
        current = None
      if current != os.fstat(lock.fileno()).st_ino:
        continue  # removed (or replaced) while this process waited
      try:
        yield
        return
      finally:
        os.remove(lock_path)  # still locked: waiters see it is gone


def _prepare_locked(paths, output, fmt, finger, options, workers, exclude,
                    verbose) -> dict[str, Any]:
  if os.path.exists(os.path.join(output, prepared.MANIFEST)):
    existing = prepared.read_manifest(output)
    if existing.get("fingerprint") == json.loads(json.dumps(finger)):
      if verbose:
        print(f"{output} already holds this dataset; nothing to do")
      return existing
    raise ValueError(f"{output} already holds a dataset of other inputs or "
                     "options; prepare into another directory, or delete "
                     "it first")
  if os.path.isfile(output) or (os.path.isdir(output) and os.listdir(output)):
    raise ValueError(f"{output} exists and is not a prepared dataset (it has "
                     f"no {prepared.MANIFEST}); choose another --output")
  parent = os.path.dirname(output)
  for stale in glob.glob(os.path.join(parent, f".{os.path.basename(output)}"
                                      ".tmp-*")):
    shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier run
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-",
                         dir=parent)
  try:
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if fmt in ("fasta", "blastdb"):
      tasks = _sequence_tasks(paths, fmt, tmp, dict(
          options, workers=workers,
          exclude_set=exclusion_set(exclude) if exclude else frozenset()))
      results = _run(shards.sequence_piece, tasks, workers)
      rule = {"rule": "heldout if crc32(identifier) / 2^32 < "
                      "heldout_fraction", **options}
      kind = "sequences"
    elif fmt in ("text", "bytes"):
      results, rule = shards.text_pieces(paths, fmt, tmp)
      kind = "sequences"
    else:
      tasks = [{"path": p, "format": fmt, "tmp": tmp, "piece": i,
                "name": f"shard-{i:05d}"} for i, p in enumerate(paths)]
      results = _run(image_formats.image_piece, tasks, workers)
      shapes = {tuple(r["image_shape"]) for r in results}
      if len(shapes) != 1:
        raise ValueError(f"the inputs hold images of different shapes "
                         f"{sorted(shapes)}; prepare them separately")
      rule, kind = {"rule": "one split, 'all'"}, "images"
      extra["image_shape"] = list(shapes.pop())
    manifest = _write_manifest(tmp, fmt, kind, finger, results, rule, extra)
    os.rename(tmp, output)
    if verbose:
      mb = sum(i["size"] for i in finger["inputs"]) / 2 ** 20
      took = time.perf_counter() - start
      counts = {s: e["records"] for s, e in manifest["splits"].items()}
      print(f"prepared {output}: {counts} records from {mb:.1f} MiB in "
            f"{took:.1f} s ({mb / max(took, 1e-9):.1f} MiB/s, {workers} "
            f"workers); skipped {manifest['skipped_invalid']} invalid, "
            f"excluded {manifest['excluded']}")
    return manifest
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


CACHE_ENV = "PERFORMER_PREPARED_DIR"


def cache_dir() -> str:
  """Where raw files given by path are prepared: `$PERFORMER_PREPARED_DIR`,
  default `<data dir>/prepared` (data dir: `$PERFORMER_DATA_DIR`, default
  ~/.cache/performer_jax)."""
  return os.environ.get(CACHE_ENV) or str(files.data_dir() / "prepared")


def ensure_prepared(spec: str | Sequence[str], fmt: str, *, provider: str,
                    skip_invalid: bool = False,
                    exclude: Sequence[str] = ()) -> str:
  """The prepared dataset for `spec`: a prepared directory as it is, or raw
  files (paths or globs) prepared once into the cache
  (`cache_dir()`, keyed by the inputs' paths, sizes and modification
  times). Raises DataError for a directory that is not a
  complete dataset, FileNotFoundError naming `provider` for missing files.
  """
  specs = [spec] if isinstance(spec, str) else list(spec)
  if len(specs) == 1 and os.path.isdir(specs[0]):
    prepared.read_manifest(specs[0])  # a DataError that says what to run
    return specs[0]
  for one in specs:
    if not glob.has_magic(one) and fmt != "blastdb":
      files.require_file(one, provider)
  paths = expand_inputs(specs, fmt)
  options = {"heldout_fraction": 0.0, "skip_invalid": bool(skip_invalid),
             "exclude": sorted(os.path.abspath(p) for p in exclude)}
  key = hashlib.sha256(json.dumps(fingerprint(paths, fmt, options),
                                  sort_keys=True).encode()).hexdigest()[:16]
  output = os.path.join(cache_dir(), f"{fmt}-{key}")
  if not os.path.exists(os.path.join(output, prepared.MANIFEST)):
    prepare(paths, output, fmt, skip_invalid=skip_invalid, exclude=exclude)
  return output


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of `performer-data`."""
  parser = argparse.ArgumentParser(
      prog="performer-data",
      description="Prepare datasets for training, and verify them.")
  commands = parser.add_subparsers(dest="command", required=True)
  p = commands.add_parser("prepare", help=__doc__.split("\n\n")[0])
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--input", action="append", required=True,
                 help="a file or glob (repeat for more)")
  p.add_argument("--output", required=True, help="the dataset directory")
  p.add_argument("--heldout-fraction", type=float, default=0.0,
                 help="fasta/blastdb: fraction of records, chosen by a hash "
                 "of their identifier, put in the 'heldout' split")
  p.add_argument("--skip-invalid", action="store_true",
                 help="skip and count invalid records instead of failing")
  p.add_argument("--exclude", action="append", default=[],
                 help="fasta/blastdb: leave out every record whose exact "
                 "sequence is in this FASTA file or prepared dataset (e.g. "
                 "the eval set); repeatable")
  p.add_argument("--workers", type=int, default=None,
                 help="worker processes (default: the CPU count)")
  verify.add_parser(commands)
  args = parser.parse_args(argv)
  if args.command == "verify":
    return verify.run(args)
  try:
    prepare(args.input, args.output, args.format,
            heldout_fraction=args.heldout_fraction,
            skip_invalid=args.skip_invalid, exclude=args.exclude,
            workers=args.workers, verbose=True)
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
