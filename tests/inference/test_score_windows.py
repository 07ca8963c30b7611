"""performer-score on sequences longer than the training length: windows
cover every position once, with the promised context, and the scores equal
the full model run window by window."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from performer_jax import inference
from performer_jax.inference import score
from performer_jax.tasks import protein
from tests.helpers import runs

pytestmark = pytest.mark.xdist_group("inference")


@pytest.mark.parametrize("n, length, overlap", [
    (10, 64, 32), (64, 64, 32), (65, 64, 32), (151, 64, 32), (300, 64, 0),
    (300, 64, 63), (129, 64, 16)])
def test_windows_cover_each_position_once_with_the_overlap_as_context(
    n, length, overlap):
  for owned in (score.causal_owned, score.central_owned):
    windows = owned(n, length, overlap)
    seen = np.zeros(n, int)
    for start, lo, hi in windows:
      assert 0 <= start <= lo < hi <= min(start + length, n)
      seen[lo:hi] += 1
    np.testing.assert_array_equal(seen, 1)
  for start, lo, _ in score.causal_owned(n, length, overlap)[1:]:
    assert lo - start >= overlap  # left context of every later position
  for i in range(n):  # masked LM: the window centred on i, inside [0, n)
    start = score.centred_start(i, n, length)
    assert 0 <= start <= i < start + length
    assert start + length <= max(n, length)
    if length // 2 <= i < n - length // 2:
      assert i - start == length // 2


@functools.lru_cache(maxsize=None)
def _apply(model):
  apply = functools.partial(model.apply, capture_intermediates=True,
                            mutable=["intermediates"])
  return jax.jit(apply)


def full(loaded, row):
  """log-probabilities [l, V] and final features [l, D] of one unpadded row."""
  logits, state = _apply(loaded.model)(loaded.variables, jnp.asarray(row)[None])
  return (np.asarray(jax.nn.log_softmax(logits))[0],
          np.asarray(state["intermediates"]["ln_final"]["__call__"][0])[0])


def brute_causal_windows(loaded, tokens, length, overlap):
  """Each target predicted once, in the first window (starts every
  length - overlap, the last ending at the stream's end) reaching it."""
  stream = np.concatenate([[loaded.io.bos], tokens, [loaded.io.eos]])
  n = len(stream) - 1
  starts = list(range(0, n - length, length - overlap)) + [n - length]
  total, features, done = 0.0, np.zeros(loaded.config.model.emb_dim), 0
  for start in starts:
    logp, feats = full(loaded, stream[start:start + length])
    for j in range(done, start + length):
      total += logp[j - start, stream[j + 1]]
      features += feats[j - start]
    done = start + length
  return total, n, features / n


def brute_pll_windows(loaded, tokens, length):
  n = len(tokens)
  total = 0.0
  for i in range(n):
    start = min(max(i - length // 2, 0), n - length)
    row = tokens[start:start + length].copy()
    row[i - start] = loaded.io.mask
    total += full(loaded, row)[0][i - start, tokens[i]]
  return total, n


def read_rows(path):
  return [line.split("\t") for line in open(path).read().splitlines()[1:]]


@pytest.mark.parametrize("task", ["protein_lm", "protein_mlm"])
def test_long_sequences_are_scored_in_windows(task, tmp_path, capsys):
  workdir = runs.trained(task)
  loaded = inference.load(workdir)
  length = loaded.config.data.seq_len  # 64
  rng = np.random.default_rng(0)
  letters = protein.fasta.STANDARD_AMINO_ACIDS
  seqs = ["".join(rng.choice(list(letters), size)) for size in (150, 20)]
  fasta = tmp_path / "in.fa"
  fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
  tsv, npy = str(tmp_path / "out.tsv"), str(tmp_path / "emb.npy")
  score.main(["--workdir", workdir, "--input", str(fasta), "--output", tsv,
              "--embeddings", npy, "--batch-size", "16", "--overlap", "24"])
  out = capsys.readouterr().out
  assert "scored 2 sequences" in out and "1 longer than the training" in out
  rows = read_rows(tsv)
  tokens = protein.encode(seqs[0])
  if task == "protein_lm":
    want, count, embedding = brute_causal_windows(loaded, tokens, length, 24)
    # float32 sums over 3 windows of <= 64 log-probabilities.
    np.testing.assert_allclose(np.load(npy)[0], embedding, rtol=1e-4,
                               atol=1e-5)
  else:
    want, count = brute_pll_windows(loaded, tokens, length)
  assert int(rows[0][1]) == count
  np.testing.assert_allclose(float(rows[0][2]), want, rtol=1e-4, atol=1e-3)
  # --long=skip leaves the long record out; --long=error names it.
  score.main(["--workdir", workdir, "--input", str(fasta), "--output", tsv,
              "--long", "skip"])
  assert "1 longer than the training length 64 skipped" in (
      capsys.readouterr().out)
  assert [r[0] for r in read_rows(tsv)] == ["s1"]
  with pytest.raises(SystemExit) as exit_info:
    score.main(["--workdir", workdir, "--input", str(fasta), "--output", tsv,
                "--long", "error"])
  assert exit_info.value.code == 2
  assert "s0 needs" in capsys.readouterr().err
