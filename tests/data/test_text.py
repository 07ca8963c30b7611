"""Tests for performer_jax.data.text."""

import bz2
import gzip
import zipfile

import numpy as np
import pytest

from performer_jax.data import defaults
from performer_jax.data import files
from performer_jax.data import text

CORPUS = b"<mediawiki>Anarchism is a political philosophy.</mediawiki>\n" * 40


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress,
                                      bz2.compress])
def test_read_bytes(tmp_path, compress):
  path = tmp_path / "corpus"
  path.write_bytes(compress(CORPUS))
  data = text.read_bytes(path)
  assert data.dtype == np.uint8
  assert data.tobytes() == CORPUS


def test_wiki_sample_from_wheel_and_from_data_dir(tmp_path, monkeypatch):
  wheel = tmp_path / "gensim-0.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.writestr("gensim/__init__.py", b"")
    zf.writestr(defaults.WIKI_SAMPLE_WHEEL_MEMBER, bz2.compress(CORPUS))
  assert text.read_wiki_sample(wheel).tobytes() == CORPUS
  monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path))
  (tmp_path / defaults.WIKI_SAMPLE_NAME).write_bytes(bz2.compress(CORPUS))
  assert text.read_wiki_sample().tobytes() == CORPUS


def test_missing_wiki_sample_names_setup_script(tmp_path, monkeypatch):
  monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match=r"enwiki-latest.*provided by "
                     r"`bash scripts/setup_data.sh`.*gensim wheel"):
    text.read_wiki_sample()


def test_empty_file_is_an_error(tmp_path):
  (tmp_path / "e.txt").write_bytes(b"")
  with pytest.raises(ValueError, match=r"e\.txt: file is empty"):
    text.read_bytes(tmp_path / "e.txt")


def test_split_by_fraction():
  data = np.arange(1001, dtype=np.int64).astype(np.uint8)
  splits = text.split_by_fraction(data)
  # valid/test get floor(5% of 1001) = 50 bytes each, train the other 901.
  assert [splits[k].shape[0] for k in text.SPLITS] == [901, 50, 50]
  np.testing.assert_array_equal(
      np.concatenate([splits[k] for k in text.SPLITS]), data)
  with pytest.raises(ValueError, match="fractions"):
    text.split_by_fraction(data, (0.5, 0.5, 0.0))


def test_split_enwik8():
  data = np.zeros(text.ENWIK8_NUM_BYTES, np.uint8)
  data[90_000_000] = 1  # first byte of valid
  data[95_000_000] = 2  # first byte of test
  splits = text.split_enwik8(data)
  assert [splits[k].shape[0] for k in text.SPLITS] == [90_000_000, 5_000_000,
                                                        5_000_000]
  assert splits["valid"][0] == 1 and splits["test"][0] == 2
  assert splits["train"].max() == 0
  with pytest.raises(ValueError, match=r"myfile: has 99 bytes, enwik8 has "
                     r"exactly 100000000"):
    text.split_enwik8(data[:99], "myfile")


def test_real_wiki_sample_if_installed():
  path = defaults.wiki_sample()
  if not path.is_file():
    pytest.skip(f"{path} absent: run `bash scripts/setup_data.sh`")
  data = text.read_wiki_sample()
  assert data.shape == (defaults.WIKI_SAMPLE_NUM_BYTES,)
  assert data[:10].tobytes() == b"<mediawiki"
  assert b"<title>Anarchism</title>" in data[:5000].tobytes()
