"""Tests for performer_jax.data.fasta."""

import gzip

import pytest

from performer_jax.data import fasta

GOOD = (">sp|P1|ONE first protein\n"
        "MKV\r\n"
        "lla*\n"
        "\n"
        ">sp|P2|TWO\n"
        "ACDEFGHIKLMNPQRSTVWYBZXUO\n"
        ">P3\n"
        "W\n")
EXPECTED = [("sp|P1|ONE first protein", "MKVLLA"),
            ("sp|P2|TWO", "ACDEFGHIKLMNPQRSTVWYBZXUO"),
            ("P3", "W")]


def _write(path, text, compress=False):
  data = text.encode()
  path.write_bytes(gzip.compress(data) if compress else data)
  return path


@pytest.mark.parametrize("compress", [False, True])
def test_reads_plain_and_gzipped(tmp_path, compress):
  # The gzipped copy has no .gz suffix: compression is sniffed from content.
  path = _write(tmp_path / "seqs.fa", GOOD, compress)
  records, report = fasta.read_fasta(path)
  assert records == EXPECTED
  assert report.num_records == 3
  assert report.num_residues == 6 + 25 + 1
  assert report.num_skipped == 0


def test_sequence_before_header_is_an_error(tmp_path):
  path = _write(tmp_path / "bad.fa", "\nMKV\n>P1\nMKV\n")
  with pytest.raises(ValueError, match=r"bad\.fa: line 2: sequence data "
                     r"before the first '>' header"):
    fasta.read_fasta(path)


def test_invalid_and_empty_records_are_skipped_and_counted(tmp_path, caplog):
  text = (">ok1\nMKV\n"
          ">bad_j\nMKJV\n"        # J is not in the 25-letter alphabet
          ">empty\n"
          ">bad_star\nMK*V\n"     # '*' only allowed as the last character
          ">ok2\nAAA*\n"
          ">bad_digit\nMK1\n")
  path = _write(tmp_path / "mixed.fa", text)
  records, report = fasta.read_fasta(path)
  assert records == [("ok1", "MKV"), ("ok2", "AAA")]
  assert report.skipped_invalid == 3
  assert report.skipped_empty == 1
  assert "record 2 ('bad_j'): invalid residue 'J' at position 2" in (
      report.examples[0])
  assert "mixed.fa" in caplog.text and "skipped 3 with invalid" in caplog.text


@pytest.mark.parametrize("text,message", [
    (">ok\nMKV\n>bad\nMKJV\n", r"bad\.fa: record 2 \('bad'\): invalid "
     r"residue 'J'"),
    (">ok\nMKV\n>none\n>ok2\nM\n", r"bad\.fa: record 2 \('none'\): empty "
     r"sequence"),
])
def test_strict_mode_raises_naming_file_and_record(tmp_path, text, message):
  path = _write(tmp_path / "bad.fa", text)
  with pytest.raises(ValueError, match=message):
    fasta.read_fasta(path, strict=True)


def test_file_without_valid_records_is_an_error(tmp_path):
  path = _write(tmp_path / "junk.fa", ">a\nJJJ\n>b\n")
  with pytest.raises(ValueError, match=r"junk\.fa: no valid FASTA records"):
    fasta.read_fasta(path)


def test_missing_file_names_provider(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing\.fa.*provided by "
                     r"the Debian package mmseqs2-examples"):
    fasta.read_fasta(tmp_path / "missing.fa",
                     provider="the Debian package mmseqs2-examples")


def test_corrupt_gzip_names_file(tmp_path):
  path = tmp_path / "cut.fa.gz"
  path.write_bytes(gzip.compress(GOOD.encode())[:20])
  with pytest.raises(ValueError, match=r"cut\.fa\.gz: cannot read/decompress"):
    fasta.read_fasta(path)
