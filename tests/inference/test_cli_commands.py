"""performer-generate and performer-score on tiny trained runs: outputs
checked against brute-force computations with the full model, and every bad
input named."""

import functools
import math

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from performer_jax import inference
from performer_jax.inference import generate
from performer_jax.inference import score
from performer_jax.tasks import protein
from tests.helpers import runs

pytestmark = pytest.mark.xdist_group("inference")


def run_ok(main, argv, capsys):
  main(argv)
  return capsys.readouterr().out


def run_error(main, argv, capsys, message):
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err, err


def read_fasta(text):
  records, name = {}, None
  for line in text.splitlines():
    if line.startswith(">"):
      name = line[1:]
      records[name] = ""
    else:
      records[name] += line
  return records


def test_generate_proteins_as_fasta_continuing_the_prompts(tmp_path, capsys):
  workdir = runs.trained("protein_lm")
  prompts = tmp_path / "prompts.fa"
  prompts.write_text(">a\nMKV\n>b\nAC\nDEF\n")
  out = run_ok(generate.main, ["--workdir", workdir, "--prompt-file",
                               str(prompts), "--num-samples", "3",
                               "--max-len", "20", "--batch-size", "4",
                               "--seed", "1"], capsys)
  records = read_fasta(out)
  assert sorted(records) == [f"{p}_sample{k}" for p in "ab"
                             for k in (1, 2, 3)]
  for name, seq in records.items():
    assert seq.startswith("MKV" if name[0] == "a" else "ACDEF")
    assert 3 <= len(seq) <= 20
    protein.encode(seq)  # amino acids only: no special token was sampled


def test_greedy_generation_is_the_full_models_argmax(capsys):
  loaded = inference.load(runs.trained("protein_lm"))
  out = run_ok(generate.main, ["--workdir", runs.trained("protein_lm"),
                               "--prompt", "MKVL", "--greedy", "--max-len",
                               "12"], capsys)
  seq = next(iter(read_fasta(out).values()))
  tokens = np.concatenate([[protein.BOS], protein.encode(seq)])
  full = np.array(jax.jit(loaded.model.apply)(loaded.variables,
                                              tokens[None]))[0]
  banned = [protein.PAD, protein.MASK, protein.BOS]
  full[:, banned] = -np.inf
  for t in range(4, len(tokens) - 1):
    assert full[t, tokens[t + 1]] >= full[t].max() - 1e-4, t
  if len(seq) < 12:  # it stopped at the end token: EOS was the argmax
    assert full[len(tokens) - 1].argmax() == protein.EOS


def test_generate_text_and_pixels(tmp_path, capsys):
  out = run_ok(generate.main, ["--workdir", runs.trained("text_lm", "softmax"),
                               "--prompt", "The ", "--num-samples", "2",
                               "--max-len", "24"], capsys)
  blocks = out.split("=== ")
  assert [b.split(" ===")[0] for b in blocks[1:]] == [
      "prompt_sample1", "prompt_sample2"]
  assert all(b.split("===\n", 1)[1].startswith("The ") for b in blocks[1:])
  png = str(tmp_path / "grid.png")
  out = run_ok(generate.main, ["--workdir", runs.trained("pixel_lm"),
                               "--num-samples", "3", "--output", png],
               capsys)
  grid = matplotlib.image.imread(png)
  assert grid.shape[:2] == (30, 3 * 30) and "wrote 3 images" in out


def test_generate_rejects_bad_input(tmp_path, capsys):
  protein_run = runs.trained("protein_lm")
  run_error(generate.main, ["--workdir", protein_run, "--prompt", "  "],
            capsys, "--prompt is empty")
  run_error(generate.main, ["--workdir", protein_run, "--prompt", "MKJ1"],
            capsys, "the character 'J'")
  run_error(generate.main, ["--workdir", protein_run, "--prompt", "M" * 40,
                            "--max-len", "30"], capsys,
            "prompt 'prompt' has 40 tokens")
  run_error(generate.main, ["--workdir", protein_run, "--max-len", "999"],
            capsys, "--max-len must be in [1, 64]")
  run_error(generate.main, ["--workdir", runs.trained("protein_mlm")], capsys,
            "masked language model")
  run_error(generate.main, ["--workdir", runs.trained("text_lm", "softmax")],
            capsys, "no start token")
  run_error(generate.main, ["--workdir", str(tmp_path)], capsys,
            "no config.json")
  empty = tmp_path / "empty.fa"
  empty.write_text("\n\n")
  run_error(generate.main, ["--workdir", protein_run, "--prompt-file",
                            str(empty)], capsys, "holds no sequence")


def full_model(loaded, tokens_BL):
  """The full model's log-probabilities [B, L, V] and final layer-norm
  outputs [B, L, D] (what the embeddings pool), in one jitted call."""
  apply = functools.partial(loaded.model.apply, capture_intermediates=True,
                            mutable=["intermediates"])
  logits, state = jax.jit(apply)(loaded.variables, jnp.asarray(tokens_BL))
  return (np.asarray(jax.nn.log_softmax(logits)),
          np.asarray(state["intermediates"]["ln_final"]["__call__"][0]))


def brute_causal(loaded, tokens):
  """Sum of log p(next) over the stream ([BOS] + tokens + [EOS], each where
  the task has one), one unpadded sequence at a time, its count, and the
  mean final features of the inputs (the stream but its last token)."""
  io_ = loaded.io
  stream = np.concatenate([[] if io_.bos is None else [io_.bos], tokens,
                           [] if io_.eos is None else [io_.eos]]
                          ).astype(np.int32)
  logp, features = full_model(loaded, stream[None, :-1])
  return (float(np.sum(logp[0, np.arange(len(stream) - 1), stream[1:]])),
          len(stream) - 1, features[0].mean(0))


def brute_pll(loaded, tokens):
  """Every position masked in turn (one row each), and the unmasked
  sequence in the last row for its mean final features."""
  n = len(tokens)
  rows = np.tile(tokens, (n + 1, 1))
  rows[np.arange(n), np.arange(n)] = loaded.io.mask
  logp, features = full_model(loaded, rows)
  return (float(np.sum(logp[np.arange(n), np.arange(n), tokens])), n,
          features[n].mean(0))


def read_tsv(path):
  lines = open(path).read().splitlines()
  return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.mark.parametrize("task", ["protein_lm", "protein_mlm"])
def test_score_equals_brute_force(task, tmp_path, capsys):
  workdir = runs.trained(task)
  loaded = inference.load(workdir)
  seqs = ["MKVLA", "ACDEFGHIKLMNPQRSTVWY", "W", "MMMMMMMMPPK"]
  fasta = tmp_path / "in.fa"
  fasta.write_text("".join(f">s{i} desc\n{s}\n" for i, s in enumerate(seqs)))
  tsv, npy = str(tmp_path / "out.tsv"), str(tmp_path / "emb.npy")
  run_ok(score.main, ["--workdir", workdir, "--input", str(fasta),
                      "--output", tsv, "--embeddings", npy,
                      "--batch-size", "3"], capsys)
  header, rows = read_tsv(tsv)
  column = "log_likelihood" if task == "protein_lm" else "pseudo_log_likelihood"
  assert header == ["name", "predicted", column, "bits_per_token"]
  assert [r[0] for r in rows] == [f"s{i}" for i in range(len(seqs))]
  emb = np.load(npy)
  assert emb.shape == (len(seqs), loaded.config.model.emb_dim)
  for seq, row, vector in zip(seqs, rows, emb):
    brute = brute_causal if task == "protein_lm" else brute_pll
    want, count, embedding = brute(loaded, protein.encode(seq))
    assert int(row[1]) == count
    # float32 log-softmax sums over up to 21 tokens: 1e-4 relative.
    np.testing.assert_allclose(float(row[2]), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(row[3]), -want / count / math.log(2),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vector, embedding, rtol=1e-4, atol=1e-5)


def test_score_text_and_errors(tmp_path, capsys):
  workdir = runs.trained("text_lm", "softmax")
  lines = tmp_path / "lines.txt"
  lines.write_text("hello world\n\nsecond line\n")
  tsv = str(tmp_path / "t.tsv")
  run_ok(score.main, ["--workdir", workdir, "--input", str(lines),
                      "--output", tsv], capsys)
  header, rows = read_tsv(tsv)
  assert header == ["name", "predicted", "log_likelihood", "bits_per_byte"]
  assert [(r[0], r[1]) for r in rows] == [("line1", "10"), ("line3", "10")]
  loaded = inference.load(workdir)
  for line, row in zip(["hello world", "second line"], rows):
    # Text has no start token: every byte after the first is predicted.
    want, count, _ = brute_causal(loaded, loaded.io.encode(line))
    assert int(row[1]) == count == len(line) - 1
    np.testing.assert_allclose(float(row[2]), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(row[3]), -want / count / math.log(2),
                               rtol=1e-4, atol=1e-4)
  long = tmp_path / "long.txt"
  long.write_text("x" * 500 + "\n")
  run_error(score.main, ["--workdir", workdir, "--input", str(long),
                         "--output", tsv, "--long", "error"], capsys,
            "line1 needs 499 positions")
  one = tmp_path / "one.txt"
  one.write_text("x\n")
  run_error(score.main, ["--workdir", workdir, "--input", str(one),
                         "--output", tsv], capsys, "too short")
  bad = tmp_path / "bad.fa"
  bad.write_text(">ok\nMKV\n>broken\nMK#V\n")
  run_error(score.main, ["--workdir", runs.trained("protein_lm"), "--input",
                         str(bad), "--output", tsv], capsys,
            "broken: sequence has the character '#'")
  run_error(score.main, ["--workdir", workdir, "--input",
                         str(tmp_path / "none.txt"), "--output", tsv], capsys,
            "does not exist")
  # Nothing half-written was left behind by the failures.
  assert sorted(p.name for p in tmp_path.iterdir()
                if p.name.endswith(".tmp")) == []
