"""A prepared dataset damaged after preparation never trains silently: file
sizes are checked when a split opens, each record's offsets when it is read
(in the prefetch thread or the main process), and `performer-data verify`
finds any changed byte."""

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from performer_jax.configs import protein_mlm as protein_mlm_config
from performer_jax.data import dataset as prepared
from performer_jax.data import prepare
from performer_jax.data import verify
from performer_jax.tasks import protein
from performer_jax.train import cli
from performer_jax.train import input_pipeline
from performer_jax.train import trainer as trainer_lib
from performer_jax.train import workdir as workdir_lib
from tests.helpers import inputs

LETTERS = list("ACDEFGHIKLMNPQRSTVWY")


def fasta(path, n, seed):
  rng = np.random.default_rng(seed)
  path.write_text("".join(f">s{seed}_{i}\n"
                          + "".join(rng.choice(LETTERS, rng.integers(5, 40)))
                          + "\n" for i in range(n)))
  return str(path)


@pytest.fixture(name="dataset")
def fixture_dataset(tmp_path):
  """Two train shards (78 and 4 records) and a heldout split."""
  inputs_ = [fasta(tmp_path / "a.fa", 100, 0), fasta(tmp_path / "b.fa", 5, 1)]
  root = tmp_path / "data"
  prepare.prepare(inputs_, str(root), "fasta", heldout_fraction=0.2,
                  workers=1)
  manifest = prepared.read_manifest(root)
  assert [s["records"] for s in manifest["splits"]["train"]["shards"]] == [
      78, 4]
  return root


def index_of(root, shard=0):
  path = root / "train" / f"shard-{shard:05d}.index"
  return path, np.fromfile(path, prepared.INDEX_DTYPE)


def smoke_config(dataset, verify_first=False):
  config = protein_mlm_config.get_config("smoke")
  config.data.train_path = str(dataset)
  config.data.eval_path = "heldout"
  config.data.verify = verify_first
  return config


def test_open_checks_the_size_of_every_shard_file(dataset):
  path, offsets = index_of(dataset)
  path.write_bytes(path.read_bytes()[:-8])  # one record's offset cut off
  truncated = (r"train/shard-00000.index has 624 bytes, the manifest says "
               r"632: the dataset is damaged or incomplete; prepare it again")
  with pytest.raises(prepared.DataError, match=truncated):
    prepared.Sequences(dataset)
  # The trainer fails while building the task, before compiling; the
  # command line exits 2 with this one-line message.
  with pytest.raises(prepared.DataError, match=truncated) as e:
    trainer_lib.Trainer(smoke_config(dataset))
  assert cli.exit_code(e.value) == cli.ExitCode.BAD_INPUT
  assert "\n" not in str(e.value)
  # The right size, but not the offsets of this tokens file.
  (offsets + 1).tofile(path)
  with pytest.raises(prepared.DataError, match=(
      r"shard-00000.index runs from offset 1 to \d+, the manifest says 0 "
      r"to \d+: the dataset is damaged")):
    prepared.Sequences(dataset)
  offsets.tofile(path)
  prepared.Sequences(dataset)  # restored: opens
  for suffix in ("index", "tokens"):
    missing = dataset / "train" / f"shard-00001.{suffix}"
    kept = missing.read_bytes()
    missing.unlink()
    with pytest.raises(prepared.DataError, match=(
        rf"train/shard-00001.{suffix} is missing: the dataset is damaged")):
      prepared.Sequences(dataset)
    missing.write_bytes(kept)
  assert prepared.Sequences(dataset, "heldout")[0].size


def test_images_file_size_is_checked(tmp_path):
  rng = np.random.default_rng(0)
  npz = tmp_path / "train_data_batch_1.npz"
  np.savez(npz, data=rng.integers(0, 256, (3, 3 * 8 * 8), np.uint8),
           labels=np.arange(3))
  root = tmp_path / "images"
  prepare.prepare([str(npz)], str(root), "imagenet_npz", workers=1)
  images = prepared.Images(root)
  assert images[2].shape == (8, 8, 3)
  shard = root / "all" / "shard-00000.images"
  shard.write_bytes(shard.read_bytes()[:-1])
  with pytest.raises(prepared.DataError, match=r"shard-00000.images has 575 "
                     r"bytes, the manifest says 576"):
    prepared.Images(root)
  shard.write_bytes(b"")
  report = verify.verify(root)
  assert list(report.problems) == ["all/shard-00000"]


def test_garbage_offsets_fail_at_read_naming_shard_and_record(dataset):
  path, offsets = index_of(dataset)
  tokens = int(offsets[-1])
  seqs = prepared.Sequences(dataset)
  good = [seqs[i].copy() for i in range(len(seqs))]
  # Garbage past the tokens file, a negative offset, and two entries in the
  # wrong order: each record that reads one fails, except the two around
  # the swap, whose offsets stay ordered (their bytes are wrong: `verify`
  # finds that); the rest read as before.
  damaged = offsets.copy()
  damaged[10], damaged[20] = 1 << 40, -5
  damaged[30], damaged[31] = damaged[31], damaged[30]
  damaged.tofile(path)
  # Sizes and ends are right: it opens. A copy sent to a worker process
  # (pickled, files reopened there) checks the same.
  seqs = pickle.loads(pickle.dumps(prepared.Sequences(dataset)))
  bad, plausible = {9, 10, 19, 20, 30}, {29, 31}
  for record in range(len(seqs)):
    if record in plausible:
      assert seqs[record].size != good[record].size
    elif record in bad:
      with pytest.raises(prepared.DataError) as e:
        seqs[record]  # pylint: disable=pointless-statement
      message = str(e.value)
      assert f"train/shard-00000.index: record {record} has offsets" in message
      assert f"inside the {tokens} bytes of shard-00000.tokens" in message
      assert "\n" not in message and "performer-data verify" in message
      assert cli.exit_code(e.value) == cli.ExitCode.BAD_INPUT
      # What a grain worker process sends back: the same type and message.
      again = pickle.loads(pickle.dumps(e.value))
      assert type(again) is prepared.DataError and str(again) == message
    else:
      np.testing.assert_array_equal(seqs[record], good[record])
  # Through the training pipeline: the same error from the prefetch thread
  # (grain) and from the main process (no prefetch).
  garbage = offsets.copy()
  garbage[1:-1] = np.random.default_rng(0).integers(1 << 20, 1 << 40,
                                                    offsets.size - 2)
  garbage.tofile(path)
  source = protein.MlmSource(prepared.Sequences(dataset), mask_rate=0.15,
                             seed=0, train=True, global_batch_size=8,
                             seq_len=16, process_index=0, process_count=1)
  for prefetch in (2, 0):
    batches = input_pipeline.local_batches(source, 0, prefetch=prefetch)
    with pytest.raises(prepared.DataError,
                       match=r"shard-00000.index: record \d+ has offsets"):
      next(batches)
    if hasattr(batches, "close"):
      batches.close()


def test_verify_finds_a_flipped_bit_and_reports_each_damaged_shard(
    dataset, capsys, monkeypatch):
  assert prepare.main(["verify", str(dataset)]) == 0
  out = capsys.readouterr().out.strip()
  assert out.count("\n") == 0 and "all 4 shards intact" in out
  [report] = verify.require_intact([str(dataset)])  # what data.verify runs
  assert report.intact and report.files == 8
  # A single bit of one tokens file.
  tokens = dataset / "train" / "shard-00001.tokens"
  original = tokens.read_bytes()
  data = bytearray(original)
  data[len(data) // 2] ^= 0x10
  tokens.write_bytes(bytes(data))
  prepared.Sequences(dataset)  # nothing else can see it
  assert prepare.main(["verify", str(dataset), "--workers", "2"]) == 1
  err = capsys.readouterr().err
  assert (f"damaged: {dataset}/train/shard-00001: shard-00001.tokens: "
          "SHA-256 differs from the manifest") in err
  assert "1 of 4 shards damaged" in err
  # The lowest bit of one offset: still ordered, found by the index digest.
  path, offsets = index_of(dataset)
  moved = offsets.copy()
  moved[40] ^= 1
  moved.tofile(path)
  report = verify.verify(dataset)
  assert report.problems == {
      "train/shard-00000": ["shard-00000.index: SHA-256 differs from the "
                            "manifest"],
      "train/shard-00001": ["shard-00001.tokens: SHA-256 differs from the "
                            "manifest"]}
  # Datasets prepared before indexes had digests: their offsets are checked
  # entry by entry, across the streamed blocks (8 entries each here).
  monkeypatch.setattr(verify, "BLOCK_BYTES", 64)
  manifest = json.loads((dataset / "manifest.json").read_text())
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      del shard["index_sha256"]
  (dataset / "manifest.json").write_text(json.dumps(manifest))
  tokens.write_bytes(original)
  assert verify.verify(dataset).intact  # the offset moved by one is ordered
  end = int(offsets[-1])
  # Past the end (inside a block), decreasing (the first of a block), and
  # an ordered last entry that is not the end.
  for entry, value, record in ((37, end + 1, 36), (48, 0, 47),
                               (78, end - 1, 77)):
    wrong = offsets.copy()
    wrong[entry] = value
    wrong.tofile(path)
    problems = verify.verify(dataset).problems["train/shard-00000"]
    if entry == 78:
      assert problems == [f"shard-00000.index: it ends at offset {end - 1}, "
                          f"its tokens file has {end} bytes"]
    else:
      assert problems[0].startswith(
          f"shard-00000.index: record {record} has offsets "
          f"[{wrong[entry - 1]}, {value}), not an ordered range")
  offsets.tofile(path)
  (dataset / "heldout" / "shard-00000.index").unlink()
  (dataset / "train" / "shard-00001.tokens").write_bytes(b"x")
  assert verify.verify(dataset).problems == {
      "heldout/shard-00000": ["shard-00000.index is missing"],
      "train/shard-00001": [f"shard-00001.tokens has 1 bytes, the manifest "
                            f"says {len(original)}"]}
  assert prepare.main(["verify", str(dataset / "nothing")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_data_verify_runs_before_training(dataset, tmp_path):
  tokens = dataset / "train" / "shard-00000.tokens"
  data = bytearray(tokens.read_bytes())
  data[3] ^= 1
  tokens.write_bytes(bytes(data))
  config = smoke_config(dataset, verify_first=True)
  with pytest.raises(prepared.DataError, match=(
      "^" + re.escape(f"{dataset}/train/shard-00000: shard-00000.tokens: "
                      "SHA-256 differs from the manifest: the dataset is "
                      "damaged"))):
    trainer_lib.Trainer(config)
  # Turning the check on or off does not change what a workdir trains.
  assert workdir_lib.resumable("data.verify")


def test_train_command_exits_2_naming_the_damaged_shard(dataset, tmp_path):
  path, offsets = index_of(dataset)
  offsets[1:-1] = -1  # every entry but the ends overwritten
  offsets.tofile(path)
  proc = subprocess.run(
      [sys.executable, "-m", "performer_jax.train",
       "--config=protein_mlm:smoke", f"--config.data.train_path={dataset}",
       "--config.data.eval_path=heldout", "--config.trainer.steps=2",
       "--config.optimizer.warmup_steps=1",
       "--config.trainer.eval_every=0", f"--workdir={tmp_path / 'w'}"],
      cwd=inputs.REPO, env=inputs.subprocess_env(PERFORMER_JAX_TCMALLOC="0"),
      capture_output=True, text=True, timeout=240, check=False)
  assert proc.returncode == cli.ExitCode.BAD_INPUT, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert re.search(r"train/shard-00000.index: record \d+ has offsets "
                   r"\[-?\d+, -?\d+\)", errors[0]), errors[0]
