"""The Python API of a loaded model against the commands: the same text,
the same rules for input, and errors that name the user's own flag or path."""

import os

import numpy as np
import pytest

import performer_jax
from performer_jax.inference import cli
from performer_jax.inference import generate
from performer_jax.inference import score
from performer_jax.tasks import protein
from tests.helpers import runs

pytestmark = pytest.mark.xdist_group("inference")


def exit_2(main, argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  return err


def test_load_model_generates_what_the_command_writes(capsys):
  workdir = runs.trained("protein_lm")
  m = performer_jax.load_model(workdir)
  assert m.tokens("MKV").tolist() == [protein.BOS, *protein.encode("MKV")]
  texts = m.generate("MKV", num_samples=3, max_len=20, seed=1)
  generate.main(["--workdir", workdir, "--prompt", "MKV", "--num-samples",
                 "3", "--max-len", "20", "--seed", "1"])
  out = capsys.readouterr().out
  written = ["".join(block.splitlines()[1:]) for block in out.split(">")[1:]]
  assert texts == written
  for text in texts:  # residues only: no start, end, mask or pad symbol
    assert text.startswith("MKV")
    protein.encode(text)
  with pytest.raises(ValueError, match="greedy=True"):
    m.generate("MKV", temperature=0.0)
  err = exit_2(generate.main, ["--workdir", workdir, "--temperature", "0"],
               capsys)
  assert "--greedy" in err and "greedy=True" not in err


def test_a_trailing_stop_codon_reads_as_prepare_reads_it(tmp_path, capsys):
  workdir = runs.trained("protein_lm")
  fasta = tmp_path / "in.fa"
  fasta.write_text(">a\nMKVL*\n>b\nMKVL\n")
  tsv = str(tmp_path / "out.tsv")
  score.main(["--workdir", workdir, "--input", str(fasta), "--output", tsv])
  capsys.readouterr()
  rows = [line.split("\t") for line in open(tsv).read().splitlines()[1:]]
  assert rows[0][1:] == rows[1][1:]
  with pytest.raises(ValueError, match="'\\*'"):
    protein.encode("MK*VL")  # only a final stop marker is dropped


def test_outputs_name_the_real_path_and_export_keeps_files(tmp_path, capsys):
  workdir = runs.trained("protein_lm")
  fasta = tmp_path / "in.fa"
  fasta.write_text(">a\nMKVL\n")
  missing = str(tmp_path / "nofolder" / "out.tsv")
  err = exit_2(score.main, ["--workdir", workdir, "--input", str(fasta),
                            "--output", missing], capsys)
  assert missing in err and ".tmp" not in err
  out = tmp_path / "model.msgpack"
  out.write_bytes(b"keep me")
  err = exit_2(cli.export_main, ["--workdir", workdir, "--output", str(out)],
               capsys)
  assert "--overwrite" in err and out.read_bytes() == b"keep me"
  cli.export_main(["--workdir", workdir, "--output", str(out),
                   "--overwrite"])
  assert "wrote step 1" in capsys.readouterr().out
  assert performer_jax.load_model(str(out)).step == 1
  assert sorted(os.listdir(tmp_path)) == ["in.fa", "model.msgpack"]
  np.testing.assert_equal(performer_jax.load_model(str(out)).tokens("M"),
                          [protein.BOS, protein.encode("M")[0]])
