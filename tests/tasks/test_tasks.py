"""Tests for performer_jax.tasks (sampling, masking, configs, all tasks).

Every task is built from small fixture files written to tmp_path, so these
tests do not need the Debian data; the last test checks the real embedded
data when it is installed.
"""

import bz2
import gzip
import pickle
import struct

import numpy as np
import pytest

from performer_jax.data import defaults
from performer_jax.data import fasta
from performer_jax.schemas import ConfigError
from performer_jax.tasks import base
from performer_jax.tasks import masking
from performer_jax.tasks import pixels
from performer_jax.tasks import protein
from performer_jax.tasks import sampling
from performer_jax.tasks import TASKS
from performer_jax.tasks import VARIANTS

# ---------------------------------------------------------------- fixtures


def random_proteins(rng, lengths):
  letters = np.array(list(fasta.STANDARD_AMINO_ACIDS))
  return ["".join(rng.choice(letters, n)) for n in lengths]


def write_fasta(path, seqs, compress=False):
  text = "".join(f">seq{i} test\n{s[:30]}\n{s[30:]}\n" for i, s in
                 enumerate(seqs))
  path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
  return str(path)


def idx_bytes(array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      struct.pack(">I", d) for d in array.shape)
  return header + array.tobytes()


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
  """Writes one fixture file set shared by the tests of this module."""
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(123)
  train = random_proteins(rng, rng.integers(5, 60, 24))
  evals = random_proteins(rng, [50, 7, 33, 12, 40] + [20] * 8)
  images = rng.integers(0, 256, (24, 2, 3, 2), np.uint8)
  eval_images = rng.integers(0, 256, (6, 2, 3, 2), np.uint8)
  (root / "train-idx").write_bytes(gzip.compress(idx_bytes(images)))
  (root / "eval-idx").write_bytes(idx_bytes(eval_images))
  corpus = rng.integers(0, 256, 4000, np.uint8)
  (root / "corpus.bz2").write_bytes(bz2.compress(corpus.tobytes()))
  return {"train_seqs": train, "eval_seqs": evals,
          "train_fasta": write_fasta(root / "train.fa.gz", train, True),
          "eval_fasta": write_fasta(root / "eval.fa", evals),
          "images": images, "eval_images": eval_images,
          "train_idx": str(root / "train-idx"),
          "eval_idx": str(root / "eval-idx"),
          "corpus": corpus, "corpus_path": str(root / "corpus.bz2")}


def task_config(name, files, **overrides):
  """The task's smoke data section (a ConfigDict) pointed at fixture files."""
  cfg = TASKS[name].variant_data("smoke").to_config_dict()
  if name.startswith("protein"):
    cfg.train_path, cfg.eval_path = files["train_fasta"], files["eval_fasta"]
    cfg.seq_len, cfg.batch_size, cfg.num_eval_batches = 32, 8, 0
  elif name == "text_lm":
    cfg.source, cfg.path = "file", files["corpus_path"]
    cfg.seq_len, cfg.batch_size, cfg.num_eval_batches = 16, 4, 0
  else:
    cfg.dataset = "idx"
    cfg.train_path, cfg.eval_path = files["train_idx"], files["eval_idx"]
    cfg.seq_len, cfg.batch_size, cfg.num_eval_batches = 12, 4, 0
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def make(name, cfg, process_index=0, process_count=1):
  """Parses a data section with the task's schema and builds the task."""
  task = TASKS[name]
  return task.build(task.data.parse(cfg), process_index=process_index,
                    process_count=process_count)


def build(name, files, process_index=0, process_count=1, **overrides):
  return make(name, task_config(name, files, **overrides), process_index,
              process_count)


def encoded(seq):
  return protein.encode(seq).astype(np.int32)


# --------------------------------------------------------- sampling/masking


def test_check_batch_values_rejects_bad_batches():
  good = {"inputs": np.array([[1, 2, 0]], np.int32),
          "targets": np.array([[2, 3, 0]], np.int32),
          "weights": np.array([[1, 1, 0]], np.float32),
          "key_mask": np.array([[True, True, False]])}
  base.check_batch_values(good, 4)
  with pytest.raises(ValueError, match=r"batch\['targets'\] has ids in "
                     r"\[0, 3\], outside the vocabulary \[0, 3\)"):
    base.check_batch_values(good, 3)
  bad = dict(good, weights=np.array([[1, 1, 1]], np.float32))
  with pytest.raises(ValueError, match="non-zero on padding"):
    base.check_batch_values(bad, 4)


def test_local_rows_and_errors():
  assert sampling.local_rows(8, 1, 4) == range(2, 4)
  with pytest.raises(ValueError, match="batch_size 6 .* not divisible by "
                     "process_count 4"):
    sampling.local_rows(6, 0, 4)
  with pytest.raises(ValueError, match=r"process_index must be in \[0, 2\)"):
    sampling.local_rows(8, 2, 2)


def test_epoch_order_is_a_permutation_per_epoch():
  order = sampling.EpochOrder(10, seed=3)
  epoch0 = [order.index(p) for p in range(10)]
  epoch1 = [order.index(p) for p in range(10, 20)]
  assert sorted(epoch0) == sorted(epoch1) == list(range(10))
  assert epoch0 != epoch1
  assert [sampling.EpochOrder(10, 3).index(p) for p in range(10)] == epoch0
  assert [sampling.EpochOrder(10, 4).index(p) for p in range(10)] != epoch0


def test_entropy_bits_by_hand():
  # p = (1/2, 1/4, 1/4): H = 0.5*1 + 2 * 0.25*2 = 1.5 bits; zeros ignored.
  assert sampling.entropy_bits(np.array([4, 0, 2, 2])) == pytest.approx(1.5)
  assert sampling.entropy_bits(np.array([7])) == 0.0


def test_bert_mask_statistics():
  rng = np.random.default_rng(0)
  low, high, mask_id = 4, 24, 1
  tokens = rng.integers(low, high, 400_000)
  inputs, selected = masking.bert_mask(tokens, rng, mask_rate=0.15,
                                       mask_id=mask_id, random_low=low,
                                       random_high=high)
  n_sel = selected.sum()
  assert abs(n_sel / tokens.size - 0.15) < 0.003
  np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
  masked = (inputs[selected] == mask_id).mean()
  changed = ((inputs[selected] != mask_id)
             & (inputs[selected] != tokens[selected])).mean()
  # A random replacement keeps the original with probability 1/20.
  assert abs(masked - 0.8) < 0.006
  assert abs(changed - 0.1 * 19 / 20) < 0.005
  assert abs((inputs[selected] == tokens[selected]).mean() - 0.105) < 0.005
  assert inputs[selected & (inputs != mask_id)].min() >= low
  assert inputs[selected & (inputs != mask_id)].max() < high


# ------------------------------------------------------------------ configs


def test_registry_and_variants():
  assert set(TASKS) == {"protein_mlm", "protein_lm", "text_lm", "pixel_lm",
                        "copy", "sentence_embedding"}
  for name, task in TASKS.items():
    assert task.name == name
    smoke = task.variant_data("smoke")
    for variant in VARIANTS:
      assert type(task.variant_data(variant)) is task.data
    assert smoke.seq_len <= 64 and smoke.batch_size <= 8
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
      task.variant_data("huge")
  assert TASKS["protein_mlm"].variant_data("paper").seq_len == 1024


@pytest.mark.parametrize("name,key,value,message", [
    ("protein_mlm", "bogus", 1, r"unknown key config\.data\.bogus"),
    ("protein_mlm", "seq_len", 0, r"data\.seq_len must be an integer >= 1"),
    ("protein_mlm", "mask_rate", 1.5, r"data\.mask_rate must be a number in "
     r"\(0.0, 1.0\)"),
    ("protein_lm", "batch_size", "8", r"data\.batch_size must be an integer"),
    ("protein_lm", "num_eval_batches", 99, r"num_eval_batches=99 exceeds"),
    ("text_lm", "source", "wikipedia", r"data\.source must be one of"),
    ("text_lm", "eval_split", "train", r"data\.eval_split must be one of"),
    ("pixel_lm", "dataset", "mnist", r"data\.dataset must be one of"),
    ("pixel_lm", "seq_len", 13, r"data\.seq_len=13 exceeds the 12"),
])
def test_bad_config_values(data_files, name, key, value, message):
  cfg = task_config(name, data_files)
  with cfg.unlocked():
    if key in cfg:
      del cfg[key]
    cfg[key] = value
  with pytest.raises(ValueError, match=message):
    make(name, cfg)


def test_missing_key(data_files):
  cfg = task_config("text_lm", data_files)
  del cfg["seed"]
  with pytest.raises(ConfigError, match=r"missing key config\.data\.seed "
                     r"\(default: 0\)"):
    make("text_lm", cfg)


def test_missing_default_data_names_package(monkeypatch, tmp_path):
  monkeypatch.setattr(defaults, "MMSEQS2_DIR", tmp_path)
  with pytest.raises(FileNotFoundError, match="DB.fasta.gz.*apt-get install "
                     "mmseqs2-examples"):
    make("protein_lm", TASKS["protein_lm"].variant_data("smoke").to_dict())


# -------------------------------------------------------- all tasks: batches

ALL = ["protein_mlm", "protein_lm", "text_lm", "pixel_lm"]


@pytest.mark.parametrize("name", ALL)
def test_batches_follow_contract_and_are_deterministic(data_files, name):
  task = build(name, data_files)
  cfg = task_config(name, data_files)
  for source in (task.train, task.eval):
    for step in (0, 1):
      batch = source.get_batch(step)
      base.check_batch(batch, cfg.batch_size, cfg.seq_len)
      base.check_batch_values(batch, task.vocab_size)
  again = build(name, data_files)
  other_seed = build(name, data_files, seed=1)
  for k in base.BATCH_KEYS:
    np.testing.assert_array_equal(task.train.get_batch(5)[k],
                                  again.train.get_batch(5)[k])
    # Eval batches do not depend on the training seed.
    np.testing.assert_array_equal(task.eval.get_batch(0)[k],
                                  other_seed.eval.get_batch(0)[k])
  assert not np.array_equal(task.train.get_batch(5)["targets"],
                            other_seed.train.get_batch(5)["targets"])
  assert not np.array_equal(task.train.get_batch(5)["targets"],
                            task.train.get_batch(6)["targets"])
  # Padding is never a target and never attended to.
  for source in (task.train, task.eval):
    b = source.get_batch(1)
    assert not b["weights"][~b["key_mask"]].any()
    assert (b["inputs"][~b["key_mask"]] == 0).all()
  with pytest.raises(ValueError, match="out of range"):
    task.eval.get_batch(task.eval.num_batches)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_global_batch(data_files, name,
                                                    process_count):
  whole = build(name, data_files)
  parts = [build(name, data_files, p, process_count)
           for p in range(process_count)]
  for step in (0, 3):
    for attr in ("train", "eval"):
      full = getattr(whole, attr).get_batch(step % whole.eval.num_batches)
      sliced = [getattr(t, attr).get_batch(step % whole.eval.num_batches)
                for t in parts]
      for k in base.BATCH_KEYS:
        np.testing.assert_array_equal(
            np.concatenate([s[k] for s in sliced]), full[k])
  assert parts[0].train.get_batch(0)["inputs"].shape[0] == (
      8 if name.startswith("protein") else 4) // process_count


# ------------------------------------------------------------------ protein


def test_protein_mlm_rows(data_files):
  task = build("protein_mlm", data_files, seq_len=32, batch_size=16)
  assert (task.vocab_size, task.causal) == (29, False)
  sources = [encoded(s) for s in data_files["train_seqs"]]
  masked, selected = 0, 0
  for step in range(3):
    b = task.train.get_batch(step)
    for i in range(16):
      real = b["key_mask"][i]
      n = real.sum()
      assert real[:n].all() and not real[n:].any()
      target = b["targets"][i, :n]
      # The row is a crop of some train sequence, as long as it allows.
      hits = [s for s in sources if n == min(len(s), 32) and any(
          np.array_equal(s[o:o + n], target) for o in range(len(s) - n + 1))]
      assert hits
      sel = b["weights"][i] > 0
      np.testing.assert_array_equal(b["inputs"][i, ~sel], b["targets"][i,
                                                                      ~sel])
      corrupted, original = b["inputs"][i, sel], b["targets"][i, sel]
      standard = (corrupted >= protein.FIRST_AMINO_ACID) & (
          corrupted < protein.FIRST_AMINO_ACID + protein.NUM_STANDARD)
      assert ((corrupted == protein.MASK) | standard
              | (corrupted == original)).all()
      masked += int((corrupted == protein.MASK).sum())
      selected += int(sel.sum())
  # 80% of ~180 selected positions become MASK; 60% is > 6 sigma below.
  assert masked > 0.6 * selected > 50


def test_protein_mlm_selection_rate(data_files):
  task = build("protein_mlm", data_files, seq_len=32, batch_size=64)
  selected, real = 0, 0
  for step in range(6):
    b = task.train.get_batch(step)
    selected += b["weights"].sum()
    real += b["key_mask"].sum()
  # About 9,000 real positions: 15% +- 4.5 standard deviations.
  assert abs(selected / real - 0.15) < 0.02


def test_protein_lm_rows_exact(data_files):
  task = build("protein_lm", data_files, seq_len=32, batch_size=5)
  b = task.eval.get_batch(0)  # eval row r is eval sequence r, uncropped start
  for r, seq in enumerate(data_files["eval_seqs"][:5]):
    s = encoded(seq)
    stream = np.concatenate([[protein.BOS], s, [protein.EOS]])
    n = min(32, len(s) + 1)
    np.testing.assert_array_equal(b["inputs"][r, :n], stream[:n])
    np.testing.assert_array_equal(b["targets"][r, :n], stream[1:n + 1])
    assert b["key_mask"][r].sum() == n == b["weights"][r].sum()
  # Sequence 1 has 7 residues: inputs [BOS, s], targets [s, EOS], then pad.
  assert b["targets"][1, 7] == protein.EOS and b["inputs"][1, 8] == 0


def test_protein_epochs_visit_every_sequence_once(data_files):
  # seq_len 64 > every train length: rows are whole sequences.
  task = build("protein_lm", data_files, seq_len=64, batch_size=8)
  seqs = {tuple(encoded(s)) for s in data_files["train_seqs"]}
  epochs = []
  for epoch in range(2):
    seen = []
    for step in range(epoch * 3, epoch * 3 + 3):  # 24 sequences / 8 rows
      b = task.train.get_batch(step)
      for i in range(8):
        n = b["weights"][i].sum().astype(int)
        seen.append(tuple(b["targets"][i, :n - 1]))
    assert sorted(seen) == sorted(seqs)
    epochs.append(seen)
  assert epochs[0] != epochs[1]


def test_protein_unigram_bits_by_hand(tmp_path):
  train = write_fasta(tmp_path / "t.fa", ["ACDA", "AC"])
  evals = write_fasta(tmp_path / "e.fa", ["WWW"])
  cfg = protein.LM.variant_data("smoke").to_config_dict()
  cfg.train_path, cfg.eval_path = train, evals
  cfg.batch_size, cfg.num_eval_batches = 2, 0
  # LM targets: residues A:3, C:2, D:1 plus one EOS per sequence (2), of 8.
  p = np.array([3, 2, 1, 2]) / 8
  lm = make("protein_lm", cfg)
  assert lm.unigram_bits == pytest.approx(-(p * np.log2(p)).sum())
  cfg = protein.MLM.variant_data("smoke").to_config_dict()
  cfg.train_path, cfg.eval_path, cfg.batch_size = train, evals, 2
  cfg.num_eval_batches = 0
  p = np.array([3, 2, 1]) / 6
  mlm = make("protein_mlm", cfg)
  assert mlm.unigram_bits == pytest.approx(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------- text


def test_text_windows(tmp_path):
  corpus = (np.arange(10_000) % 251).astype(np.uint8)
  path = tmp_path / "c.txt"
  path.write_bytes(corpus.tobytes())
  cfg = task_config("text_lm", {"corpus_path": str(path)}, seq_len=20)
  task = make("text_lm", cfg)
  assert (task.vocab_size, task.causal, task.loss_unit) == (256, True, "byte")
  b = task.train.get_batch(2)
  assert b["weights"].all() and b["key_mask"].all()
  # Consecutive bytes of the stream: next = previous + 1 (mod 251).
  np.testing.assert_array_equal((b["inputs"] + 1) % 251, b["targets"])
  np.testing.assert_array_equal(np.diff(b["inputs"], axis=1) % 251, 1)
  # Eval windows are consecutive windows of the valid split (bytes
  # 9,000-9,499), batch 1 holding windows 4..7.
  valid = corpus[9000:9500]
  assert task.eval.num_batches == (499 // 20) // 4
  e = task.eval.get_batch(1)
  for r in range(4):
    start = (4 + r) * 20
    np.testing.assert_array_equal(e["inputs"][r], valid[start:start + 20])
    np.testing.assert_array_equal(e["targets"][r],
                                  valid[start + 1:start + 21])


def test_text_train_windows_stay_in_train_split(data_files):
  task = build("text_lm", data_files, seq_len=16, batch_size=4)
  train = data_files["corpus"][:3600]  # 90% of 4,000 bytes
  for step in range(5):
    b = task.train.get_batch(step)
    for i in range(4):
      window = np.concatenate([b["inputs"][i], b["targets"][i, -1:]])
      starts = [o for o in range(len(train) - 16)
                if np.array_equal(train[o:o + 17], window)]
      assert starts


def test_text_unigram_bits_by_hand(tmp_path):
  # 900 train bytes "aaab"*225: p = (3/4, 1/4); the last 100 bytes differ.
  path = tmp_path / "c.txt"
  path.write_bytes(b"aaab" * 225 + b"z" * 100)
  cfg = task_config("text_lm", {"corpus_path": str(path)}, seq_len=8,
                    batch_size=2)
  task = make("text_lm", cfg)
  assert task.unigram_bits == pytest.approx(
      -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))


# ------------------------------------------------------------------- pixels


def test_pixel_rows_are_raster_order(data_files):
  task = build("pixel_lm", data_files, seq_len=12, batch_size=4)
  assert (task.vocab_size, task.loss_unit) == (257, "dim")
  images = data_files["eval_images"]  # [6, 2, 3, 2]
  b = task.eval.get_batch(1)  # rows 4..7 -> images 4, 5, 0, 1 (wrap around)
  for r, index in enumerate([4, 5, 0, 1]):
    raster = [images[index, h, w, c] for h in range(2) for w in range(3)
              for c in range(2)]
    np.testing.assert_array_equal(b["targets"][r], raster)
    np.testing.assert_array_equal(b["inputs"][r], [pixels.BOS] + raster[:-1])
  assert b["weights"].all() and b["key_mask"].all()


def test_pixel_short_windows_are_substreams(data_files):
  task = build("pixel_lm", data_files, seq_len=5, batch_size=4)
  streams = [np.concatenate([[pixels.BOS], img.reshape(-1)])
             for img in data_files["images"]]
  b = task.train.get_batch(0)
  for i in range(4):
    window = np.concatenate([b["inputs"][i], b["targets"][i, -1:]])
    assert any(np.array_equal(s[o:o + 6], window) for s in streams
               for o in range(len(s) - 5))


def test_pixel_imagenet_and_cifar_sources(tmp_path):
  rng = np.random.default_rng(1)
  data = [rng.integers(0, 256, (3, 3 * 4 * 4), np.uint8) for _ in range(3)]
  for k, d in enumerate(data):
    np.savez(tmp_path / f"train_data_batch_{k + 1}.npz", data=d,
             labels=np.arange(3))
  cfg = pixels.variant_data("smoke").to_config_dict()
  cfg.dataset, cfg.seq_len, cfg.batch_size = "imagenet", 48, 3
  cfg.num_eval_batches = 0
  cfg.train_path = str(tmp_path / "train_data_batch_[12].npz")
  cfg.eval_path = str(tmp_path / "train_data_batch_3.npz")
  task = make("pixel_lm", cfg)
  assert (task.train.n, task.train.images.shape) == (6, (4, 4, 3))
  expected = data[2][0].reshape(3, 4, 4).transpose(1, 2, 0).reshape(-1)
  np.testing.assert_array_equal(task.eval.get_batch(0)["targets"][0],
                                expected)
  # unigram over the two train files' intensities.
  counts = np.bincount(np.concatenate(data[:2]).reshape(-1), minlength=256)
  assert task.unigram_bits == pytest.approx(sampling.entropy_bits(counts))

  cifar = rng.integers(0, 256, (2, 3072), np.uint8)
  for name in ("data_batch_1", "test_batch"):
    with open(tmp_path / name, "wb") as f:
      pickle.dump({b"data": cifar, b"labels": [0, 1]}, f)
  cfg = pixels.variant_data("smoke").to_config_dict()
  cfg.dataset, cfg.batch_size, cfg.num_eval_batches = "cifar10", 2, 0
  cfg.train_path = str(tmp_path / "data_batch_1")
  cfg.eval_path = str(tmp_path / "test_batch") + ", " + str(
      tmp_path / "test_batch")
  task = make("pixel_lm", cfg)
  assert (task.eval.n, task.eval.images.shape) == (4, (32, 32, 3))
  first = task.eval.get_batch(0)["targets"][0]
  raster = cifar[0].reshape(3, 32, 32).transpose(1, 2, 0).reshape(-1)
  np.testing.assert_array_equal(first, raster[:64])


def test_pixel_unigram_bits_by_hand(tmp_path):
  images = np.zeros((4, 2, 2), np.uint8)
  images[:, 0, :] = 0
  images[:, 1, 0] = 255
  images[:, 1, 1] = 7  # p = (1/2, 1/4, 1/4) -> 1.5 bits
  (tmp_path / "imgs").write_bytes(idx_bytes(images))
  cfg = pixels.variant_data("smoke").to_config_dict()
  cfg.dataset, cfg.seq_len, cfg.batch_size = "idx", 4, 2
  cfg.num_eval_batches = 0
  cfg.train_path = cfg.eval_path = str(tmp_path / "imgs")
  task = make("pixel_lm", cfg)
  assert task.unigram_bits == pytest.approx(1.5)


def test_pixel_missing_glob(tmp_path):
  cfg = pixels.variant_data("smoke").to_config_dict()
  cfg.dataset, cfg.train_path = "imagenet", str(tmp_path / "nope_*.npz")
  cfg.eval_path = str(tmp_path / "nope_*.npz")
  with pytest.raises(FileNotFoundError, match=r"data\.train_path: no file "
                     "matches"):
    make("pixel_lm", cfg)


# --------------------------------------------------------------- real data


def test_real_embedded_data_if_installed():
  needed = [defaults.protein_train(), defaults.protein_eval(),
            defaults.fashion_mnist("train"), defaults.wiki_sample()]
  missing = [str(p) for p in needed if not p.is_file()]
  if missing:
    pytest.skip(f"embedded data absent ({missing}): run "
                "`bash scripts/setup_data.sh`")
  cfg = TASKS["protein_mlm"].variant_data("smoke")
  task = make("protein_mlm", cfg.to_dict())
  # Independent recount from the raw text: 20,000 records, of which the
  # 138 that repeat an eval sequence exactly are left out of training.
  def raw_records(path):
    text = "\n" + gzip.open(path, "rt").read()
    return ["".join(r.split("\n")[1:]) for r in text.split("\n>")[1:]]
  train, eval_list = (raw_records(defaults.protein_train()),
                      raw_records(defaults.protein_eval()))
  evals = set(eval_list)
  assert (len(train), len(eval_list), len(evals)) == (20_000, 500, 498)
  kept = [r for r in train if r not in evals]
  assert len(task.train.proteins) == len(kept) == 19_862
  assert len(task.eval.proteins) == 500
  assert task.train.proteins.num_tokens == sum(map(len, kept))
  loaded = {task.train.proteins[i].tobytes().decode()
            for i in range(len(task.train.proteins))}
  assert not loaded & evals
  residues = "".join(kept)
  counts = np.array([residues.count(c) for c in fasta.AMINO_ACIDS])
  assert task.unigram_bits == pytest.approx(sampling.entropy_bits(counts))
  base.check_batch(task.train.get_batch(0), cfg.batch_size, cfg.seq_len)


# sentence_embedding builds no data (it serves converted models):
# tests/convert/test_bert.py tests its io and its refusal to train.
@pytest.mark.parametrize("name", sorted(set(TASKS) - {"sentence_embedding"}))
def test_io_agrees_with_the_built_task(name, data_files):
  task = TASKS[name]
  if name == "copy":
    data = task.variant_data("smoke")
  else:
    data = task.data.parse(task_config(name, data_files))
  built = task.build(data)
  io = task.io(data)
  assert (io.vocab_size, io.causal, io.loss_unit) == (
      built.vocab_size, built.causal, built.loss_unit)
  for token in (io.bos, io.eos, io.mask, *io.special):
    assert token is None or 0 <= token < io.vocab_size


def test_encode_decode_round_trips_and_names_bad_characters():
  ids = protein.encode("mkvACD")
  assert ids.dtype == np.int32 and protein.decode(ids) == "MKVACD"
  with pytest.raises(ValueError, match=r"character 'J'.*ACDEF"):
    protein.encode("MKJ")
  from performer_jax.tasks import text  # pylint: disable=g-import-not-at-top
  assert text.decode(text.encode("héllo")) == "héllo"
  assert pixels.decode(pixels.encode("0, 255 7")) == "0 255 7"
  with pytest.raises(ValueError, match=r"\[0, 255\]"):
    pixels.encode("300")
