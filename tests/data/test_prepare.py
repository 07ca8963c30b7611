"""`performer-data prepare` and the prepared-dataset readers: every input
format, splits, invalid records, atomicity, idempotence and clear errors."""

import bz2
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from performer_jax.data import dataset as prepared
from performer_jax.data import prepare
from performer_jax.data import sequence_formats
from performer_jax.data import shards
from tests.helpers import inputs

GOOD = (">sp|P1|ONE first protein\n"
        "MKV\r\n"
        "lla*\n"
        "\n"
        ">sp|P2|TWO\n"
        "ACDEFGHIKLMNPQRSTVWYBZXUO\n"
        ">P3\n"
        "W\n")
EXPECTED = ["MKVLLA", "ACDEFGHIKLMNPQRSTVWYBZXUO", "W"]


def write(path, text, compress=None):
  data = text.encode() if isinstance(text, str) else text
  path.write_bytes(compress(data) if compress else data)
  return str(path)


def records(root, split="train"):
  seqs = prepared.Sequences(root, split)
  return [seqs[i].tobytes().decode() for i in range(len(seqs))]


@pytest.mark.parametrize("compress", [None, gzip.compress])
def test_fasta_plain_and_gzipped(tmp_path, compress):
  # The gzipped copy has no .gz suffix: compression is sniffed from content.
  path = write(tmp_path / "seqs.fa", GOOD, compress)
  manifest = prepare.prepare([path], str(tmp_path / "out"), "fasta")
  assert records(tmp_path / "out") == EXPECTED
  train = manifest["splits"]["train"]
  assert (train["records"], train["tokens"]) == (3, 6 + 25 + 1)
  assert (train["length_min"], train["length_max"]) == (1, 25)
  counts = prepared.unigram_counts(manifest, "train")
  assert counts[ord("L")] == 3 and counts[ord("W")] == 2
  assert counts.sum() == 32 and manifest["skipped_invalid"] == 0


def test_byte_ranges_give_the_same_dataset_as_one_piece(tmp_path,
                                                         monkeypatch):
  rng = np.random.default_rng(0)
  text = "".join(f">r{i} x\n" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTV"),
                                                    rng.integers(1, 90)))
                 + "\n" for i in range(3000))
  path = write(tmp_path / "big.fa", text)
  one = prepare.prepare([path], str(tmp_path / "one"), "fasta", workers=1)
  # Small blocks and ranges: records cross block and range boundaries.
  monkeypatch.setattr(sequence_formats, "BLOCK_BYTES", 997)
  monkeypatch.setattr(sequence_formats, "byte_ranges",
                      lambda size, pieces, minimum=0: [
                          (size * i // 5, size * (i + 1) // 5)
                          for i in range(5)])
  many = prepare.prepare([path], str(tmp_path / "many"), "fasta", workers=1)
  assert len(many["splits"]["train"]["shards"]) == 5
  assert records(tmp_path / "many") == records(tmp_path / "one")
  assert many["splits"]["train"]["unigram"] == one["splits"]["train"][
      "unigram"]


def test_heldout_split_follows_the_identifier_not_the_position(tmp_path):
  seqs = [f">id{i} desc\nMKV{'A' * (i % 7)}\n" for i in range(400)]
  forward = write(tmp_path / "a.fa", "".join(seqs))
  backward = write(tmp_path / "b.fa", "".join(reversed(seqs)))
  for name, path in (("fwd", forward), ("bwd", backward)):
    prepare.prepare([path], str(tmp_path / name), "fasta",
                    heldout_fraction=0.25)
  held = [sorted(records(tmp_path / n, "heldout")) for n in ("fwd", "bwd")]
  assert held[0] == held[1] and 60 < len(held[0]) < 140
  assert len(records(tmp_path / "fwd")) + len(held[0]) == 400


def test_invalid_records_fail_by_default_and_are_counted_when_skipped(
    tmp_path):
  text = (">ok1\nMKV\n"
          ">bad_j\nMKJV\n"        # J is not in the 25-letter alphabet
          ">empty\n"
          ">bad_star\nMK*V\n"     # '*' only allowed as the last character
          ">ok2\nAAA*\n"
          ">bad_digit\nMK1\n")
  path = write(tmp_path / "mixed.fa", text)
  with pytest.raises(ValueError, match=r"mixed\.fa: byte 9: record "
                     r"'bad_j': invalid character 'J'.*--skip-invalid"):
    prepare.prepare([path], str(tmp_path / "strict"), "fasta")
  assert not (tmp_path / "strict").exists()
  manifest = prepare.prepare([path], str(tmp_path / "out"), "fasta",
                             skip_invalid=True)
  assert records(tmp_path / "out") == ["MKV", "AAA"]
  assert manifest["skipped_invalid"] == 4
  assert "empty sequence" in " ".join(manifest["skipped_examples"])


def test_exclude_drops_exact_copies_of_another_set(tmp_path):
  path = write(tmp_path / "seqs.fa", GOOD)
  evals = write(tmp_path / "eval.fa", ">e1\nmkvlla\n>e2\nMMM\n")
  manifest = prepare.prepare([path], str(tmp_path / "out"), "fasta",
                             exclude=[evals])
  assert records(tmp_path / "out") == EXPECTED[1:]
  assert manifest["excluded"] == 1
  with pytest.raises(ValueError, match="--exclude applies to"):
    prepare.prepare([path], str(tmp_path / "t"), "text", exclude=[evals])


@pytest.mark.parametrize("text,message", [
    ("\nMKV\n>P1\nMKV\n", r"bad\.fa: byte 0: sequence data before the first "
     r"'>' header"),
    (">a\nJJJ\n>b\n", r"no valid records"),
])
def test_malformed_fasta_is_named(tmp_path, text, message):
  path = write(tmp_path / "bad.fa", text)
  with pytest.raises(ValueError, match=message):
    prepare.prepare([path], str(tmp_path / "out"), "fasta",
                    skip_invalid=True)


def test_missing_and_corrupt_inputs_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing\.fa.*provided by "
                     r"the Debian package mmseqs2-examples"):
    prepare.ensure_prepared(str(tmp_path / "missing.fa"), "fasta",
                            provider="the Debian package mmseqs2-examples")
  with pytest.raises(FileNotFoundError, match=r"matches no file"):
    prepare.prepare([str(tmp_path / "*.fa")], str(tmp_path / "o"), "fasta")
  cut = tmp_path / "cut.fa.gz"
  cut.write_bytes(gzip.compress(GOOD.encode())[:20])
  with pytest.raises(ValueError, match=r"cut\.fa\.gz: cannot read or "
                     r"decompress"):
    prepare.prepare([str(cut)], str(tmp_path / "out"), "fasta")


def test_idempotent_atomic_and_checked_on_open(tmp_path):
  path = write(tmp_path / "seqs.fa", GOOD)
  out = tmp_path / "out"
  first = prepare.prepare([path], str(out), "fasta")
  stamp = (out / "manifest.json").stat().st_mtime_ns
  assert prepare.prepare([path], str(out), "fasta") == first
  assert (out / "manifest.json").stat().st_mtime_ns == stamp
  with pytest.raises(ValueError, match="already holds a dataset of other"):
    prepare.prepare([path], str(out), "fasta", heldout_fraction=0.5)
  # An interrupted run leaves a temporary directory, never a dataset; the
  # next run into the same output removes it.
  stale = tmp_path / ".x2.tmp-123"
  stale.mkdir()
  with pytest.raises(prepared.DataError, match=r"x2.*does not exist.*"
                     r"performer-data prepare"):
    prepared.Sequences(tmp_path / "x2")
  (tmp_path / "x").mkdir()
  with pytest.raises(prepared.DataError, match=r"no manifest.json"):
    prepared.Sequences(tmp_path / "x")
  prepare.prepare([path], str(tmp_path / "x2"), "fasta")
  assert not stale.exists()
  # A damaged dataset or another format version is refused.
  shard = next((out / "train").glob("*.tokens"))
  shard.write_bytes(shard.read_bytes()[:-1])
  with pytest.raises(prepared.DataError, match=r"the manifest says 32: the "
                     r"dataset is damaged"):
    prepared.Sequences(out)
  manifest = json.loads((tmp_path / "x2" / "manifest.json").read_text())
  manifest["version"] = 0
  (tmp_path / "x2" / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(prepared.DataError, match=r"format version 0.*prepare "
                     r"it again"):
    prepared.Sequences(tmp_path / "x2")


def test_processes_preparing_the_same_output_take_turns(tmp_path):
  """The hosts of one run may all prepare the cache at once: each must end
  with the one complete dataset, none may delete another's work."""
  rng = np.random.default_rng(1)
  path = write(tmp_path / "many.fa", "".join(
      f">r{i}\n" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 60))
      + "\n" for i in range(20000)))
  out = str(tmp_path / "out")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "performer_jax.data.prepare", "prepare", "--input",
       path, "--output", out, "--format", "fasta", "--workers", "1"],
      env=inputs.subprocess_env(), cwd=inputs.REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for _ in range(3)]
  for proc in procs:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
  assert len(prepared.Sequences(out, "train")) == 20000
  # No lock file stays: the last holder removes it.
  assert sorted(os.listdir(tmp_path)) == ["many.fa", "out"]


def test_a_failed_prepare_leaves_nothing(tmp_path, monkeypatch):
  path = write(tmp_path / "seqs.fa", GOOD)

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(prepare, "_write_manifest", full_disk)
  with pytest.raises(OSError, match="No space"):
    prepare.prepare([path], str(tmp_path / "out"), "fasta")
  # Only the input: not the lock file that preparers took turns on either.
  assert sorted(os.listdir(tmp_path)) == ["seqs.fa"]


CORPUS = b"<mediawiki>Anarchism is a political philosophy.</mediawiki>\n" * 40


@pytest.mark.parametrize("compress", [None, gzip.compress, bz2.compress])
def test_text_splits_by_position(tmp_path, compress):
  path = write(tmp_path / "corpus", CORPUS[:1001], compress)
  manifest = prepare.prepare([path], str(tmp_path / "out"), "text")
  # valid/test get floor(5% of 1001) = 50 bytes each, train the other 901.
  sizes = [manifest["splits"][s]["tokens"] for s in ("train", "valid",
                                                     "test")]
  assert sizes == [901, 50, 50]
  whole = b"".join(prepared.Sequences(tmp_path / "out", s)[0].tobytes()
                   for s in ("train", "valid", "test"))
  assert whole == CORPUS[:1001]
  seqs = prepared.Sequences(tmp_path / "out", "train")
  assert seqs.window(899, 2).tobytes() == CORPUS[899:901]
  with pytest.raises(IndexError):
    seqs.window(900, 5)


def test_text_enwik8_split_and_empty_file(tmp_path):
  path = tmp_path / "enwik8"
  with open(path, "wb") as f:  # 10^8 bytes, sparse: cheap to write
    f.truncate(shards.ENWIK8_BYTES)
  manifest = prepare.prepare([str(path)], str(tmp_path / "out"), "bytes")
  assert [manifest["splits"][s]["tokens"] for s in ("train", "valid",
                                                    "test")] == [
                                                        90 * 10 ** 6,
                                                        5 * 10 ** 6,
                                                        5 * 10 ** 6]
  assert manifest["split_rule"]["rule"].startswith("enwik8")
  empty = write(tmp_path / "e.txt", b"")
  with pytest.raises(ValueError, match="too little text"):
    prepare.prepare([empty], str(tmp_path / "e"), "text")


def test_images_from_npz_cifar_and_idx(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 4, 4, 3), np.uint8)
  channel_major = images.transpose(0, 3, 1, 2).reshape(5, -1)
  np.savez(tmp_path / "a.npz", data=channel_major[:3], labels=np.ones(3))
  np.savez(tmp_path / "b.npz", data=channel_major[3:], labels=np.ones(2))
  manifest = prepare.prepare([str(tmp_path / "*.npz")], str(tmp_path / "n"),
                             "imagenet_npz")
  assert manifest["image_shape"] == [4, 4, 3]
  got = prepared.Images(tmp_path / "n")
  np.testing.assert_array_equal(np.stack([got[i] for i in range(5)]), images)
  cifar = rng.integers(0, 256, (2, 3072), np.uint8)
  (tmp_path / "data_batch_1").write_bytes(pickle.dumps(
      {b"data": cifar, b"labels": [1, 2]}))
  prepare.prepare([str(tmp_path / "data_batch_1")], str(tmp_path / "c"),
                  "cifar")
  np.testing.assert_array_equal(
      prepared.Images(tmp_path / "c")[1],
      cifar[1].reshape(3, 32, 32).transpose(1, 2, 0))
  gray = rng.integers(0, 256, (3, 2, 5), np.uint8)
  header = bytes([0, 0, 8, 3]) + b"".join(struct.pack(">I", d)
                                           for d in gray.shape)
  (tmp_path / "imgs").write_bytes(gzip.compress(header + gray.tobytes()))
  prepare.prepare([str(tmp_path / "imgs")], str(tmp_path / "i"), "idx")
  np.testing.assert_array_equal(prepared.Images(tmp_path / "i")[2][..., 0],
                                gray[2])
  np.savez(tmp_path / "empty.npz", data=np.zeros((0, 48), np.uint8),
           labels=np.zeros(0))
  with pytest.raises(ValueError, match=r"empty\.npz: the npz batch holds no "
                     "images"):
    prepare.prepare([str(tmp_path / "empty.npz")], str(tmp_path / "x"),
                    "imagenet_npz")
  with pytest.raises(prepared.DataError, match="holds images, not sequences"):
    prepared.Sequences(tmp_path / "n", "all")


def test_blast_database(tmp_path):
  seqs = [b"MKV", b"ACDY*", b"WWJ", b""]
  code = {c: i for i, c in enumerate(sequence_formats.NCBISTDAA.encode())}
  psq, seq_off = bytearray(b"\0"), []
  for seq in seqs:
    seq_off.append(len(psq))
    psq += bytes(code[c] for c in seq) + b"\0"
  seq_off.append(len(psq))
  headers = [b"hdr-" + bytes([65 + i]) for i in range(len(seqs))]
  hdr_off = np.concatenate([[0], np.cumsum([len(h) for h in headers])])
  title, stamp = b"test", b"today\0\0\0"
  pin = (struct.pack(">ii", 4, 1) + struct.pack(">i", len(title)) + title
         + struct.pack(">i", len(stamp)) + stamp
         + struct.pack(">i", len(seqs)) + struct.pack("<q", 8)
         + struct.pack(">i", 5)
         + np.asarray(hdr_off, ">i4").tobytes()
         + np.asarray(seq_off, ">i4").tobytes())
  base = tmp_path / "db"
  (tmp_path / "db.pin").write_bytes(pin)
  (tmp_path / "db.psq").write_bytes(bytes(psq))
  (tmp_path / "db.phr").write_bytes(b"".join(headers))
  with pytest.raises(ValueError, match=r"db\.psq: sequence 2 .*invalid "
                     r"residue 'J'"):
    prepare.prepare([str(base)], str(tmp_path / "strict"), "blastdb")
  manifest = prepare.prepare([str(base)], str(tmp_path / "out"), "blastdb",
                             skip_invalid=True)
  assert records(tmp_path / "out") == ["MKV", "ACDY"]
  assert manifest["skipped_invalid"] == 2
  with pytest.raises(FileNotFoundError, match=r"\.phr not found"):
    (tmp_path / "db.phr").unlink()
    prepare.prepare([str(base)], str(tmp_path / "o2"), "blastdb")


def test_command_line(tmp_path, capsys):
  path = write(tmp_path / "seqs.fa", GOOD)
  assert prepare.main(["prepare", "--format", "fasta", "--input", path,
                       "--output", str(tmp_path / "out")]) == 0
  assert "prepared" in capsys.readouterr().out
  assert prepare.main(["prepare", "--format", "fasta", "--input",
                       str(tmp_path / "none.fa"), "--output",
                       str(tmp_path / "o")]) == 2
  assert "none.fa" in capsys.readouterr().err


def test_real_default_data_if_installed():
  from performer_jax.data import defaults  # pylint: disable=g-import-not-at-top
  from performer_jax.tasks import text  # pylint: disable=g-import-not-at-top
  if not defaults.wiki_sample().is_file():
    pytest.skip("the Wikipedia sample is absent: run "
                "`bash scripts/setup_data.sh`")
  root = text.open_corpus("wiki_sample", "")
  splits = prepared.read_manifest(root)["splits"]
  assert sum(e["tokens"] for e in splits.values()) == (
      defaults.WIKI_SAMPLE_NUM_BYTES)
  start = prepared.Sequences(root, "train").window(0, 5000).tobytes()
  assert start.startswith(b"<mediawiki")
  assert b"<title>Anarchism</title>" in start
