"""Tests for performer_jax.data.files and performer_jax.data.defaults."""

import bz2
import gzip
import pathlib
import zipfile

import pytest

from performer_jax.data import defaults
from performer_jax.data import files

PAYLOAD = bytes(range(256)) * 3


@pytest.fixture
def variants(tmp_path):
  """The same payload stored plain, gzipped, bz2-compressed and zipped."""
  out = {"none": tmp_path / "plain.bin", "gzip": tmp_path / "g.bin",
         "bz2": tmp_path / "b.bin", "zip": tmp_path / "z.zip"}
  out["none"].write_bytes(PAYLOAD)
  out["gzip"].write_bytes(gzip.compress(PAYLOAD))
  out["bz2"].write_bytes(bz2.compress(PAYLOAD))
  with zipfile.ZipFile(out["zip"], "w") as zf:
    zf.writestr("inner/data.bin", PAYLOAD)
  return out


def test_compression_sniffed_from_content(variants):
  for kind, path in variants.items():
    assert files.compression_of(path) == kind
    assert files.read_all(path) == PAYLOAD


def test_zip_member_selection(tmp_path):
  path = tmp_path / "two.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("a.txt", b"alpha")
    zf.writestr("b.bz2", bz2.compress(b"beta"))
  assert files.read_all(path, "a.txt") == b"alpha"
  # A compressed member is decompressed too (the wheel holds a .bz2).
  assert files.read_all(path, "b.bz2") == b"beta"
  with pytest.raises(ValueError, match="holds 2 files"):
    files.read_all(path)
  with pytest.raises(ValueError, match="no member 'c'"):
    files.read_all(path, "c")


def test_require_file_names_provider(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt.*not found.*provided "
                     "by apt-get install foo"):
    files.require_file(tmp_path / "nope.txt", "apt-get install foo")
  with pytest.raises(FileNotFoundError, match="is a directory"):
    files.require_file(tmp_path, "x")


def test_data_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path))
  assert files.data_dir() == tmp_path
  assert defaults.wiki_sample() == tmp_path / defaults.WIKI_SAMPLE_NAME
  monkeypatch.delenv(files.DATA_DIR_ENV)
  assert files.data_dir() == pathlib.Path.home() / ".cache" / "performer_jax"


def test_default_paths_and_providers():
  assert defaults.fashion_mnist("test", "labels").name == (
      "t10k-labels-idx1-ubyte.gz")
  assert "mmseqs2-examples" in defaults.PROTEIN_PROVIDER
  assert "dataset-fashion-mnist" in defaults.FASHION_MNIST_PROVIDER
  assert "scripts/setup_data.sh" in defaults.WIKI_SAMPLE_PROVIDER


def test_unpacked_debian_copy_is_a_fallback(tmp_path, monkeypatch):
  monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "cache"))
  monkeypatch.setattr(defaults, "MMSEQS2_DIR", tmp_path / "usr" / "mm")
  copy = tmp_path / "cache" / "debian" / str(tmp_path / "usr" / "mm" /
                                             "DB.fasta.gz").lstrip("/")
  assert defaults.protein_train() == tmp_path / "usr" / "mm" / "DB.fasta.gz"
  copy.parent.mkdir(parents=True)
  copy.write_bytes(b">a\nM\n")
  assert defaults.protein_train() == copy
  (tmp_path / "usr" / "mm").mkdir(parents=True)
  (tmp_path / "usr" / "mm" / "DB.fasta.gz").write_bytes(b">a\nM\n")
  assert defaults.protein_train() == tmp_path / "usr" / "mm" / "DB.fasta.gz"
