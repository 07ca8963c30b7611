"""A raw FASTA file given to training follows `performer-data prepare`'s
rule: an invalid record fails naming it, or is skipped and counted with
data.skip_invalid; and preparing leaves no lock file behind."""

import logging
import os

import pytest

from performer_jax.data import prepare
from performer_jax.tasks import protein

FASTA = ">good\nMKVLA\n>bad\nMK#VL\n>also_good\nACDEF*\n"


def test_an_invalid_record_fails_as_in_prepare(tmp_path, monkeypatch):
  monkeypatch.setenv(prepare.CACHE_ENV, str(tmp_path / "cache"))
  path = tmp_path / "train.fa"
  path.write_text(FASTA)
  with pytest.raises(ValueError) as error:
    protein.open_proteins(str(path), None, skip_invalid=False)
  message = str(error.value)
  assert "record 'bad'" in message and "'#'" in message
  assert "--config.data.skip_invalid=true" in message
  with pytest.raises(ValueError, match="record 'bad'"):
    prepare.prepare([str(path)], str(tmp_path / "ds"), "fasta")


def test_skip_invalid_skips_and_counts(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv(prepare.CACHE_ENV, str(tmp_path / "cache"))
  path = tmp_path / "train.fa"
  path.write_text(FASTA)
  with caplog.at_level(logging.WARNING, "performer_jax.train"):
    seqs = protein.open_proteins(str(path), None, skip_invalid=True)
  assert len(seqs) == 2 and bytes(seqs[1]) == b"ACDEF"  # stop '*' dropped
  assert "skipped 1 invalid or empty records" in caplog.text


def test_no_lock_file_is_left_beside_the_output(tmp_path):
  path = tmp_path / "train.fa"
  path.write_text(FASTA)
  prepare.prepare([str(path)], str(tmp_path / "ds"), "fasta",
                  skip_invalid=True)
  with pytest.raises(ValueError):  # a failed prepare: no lock either
    prepare.prepare([str(path)], str(tmp_path / "ds2"), "fasta")
  assert sorted(os.listdir(tmp_path)) == ["ds", "train.fa"]


def test_a_saved_config_with_the_old_key_still_loads():
  """Workdirs written when the switch was data.strict_fasta (default False:
  skip) keep their meaning."""
  from performer_jax import experiment  # pylint: disable=g-import-not-at-top
  for strict in (False, True):
    saved = {"task": "protein_mlm", "data": {"strict_fasta": strict}}
    assert experiment.parse_saved(saved).data.skip_invalid is (not strict)
