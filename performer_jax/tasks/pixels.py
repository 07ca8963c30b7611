"""Autoregressive image modelling over 8-bit intensities (`pixel_lm`).

An image uint8 [H, W, C] is read in raster order over (H, W, C): the
D = H*W*C intensities p_0..p_{D-1}. Vocabulary: 257 = the 256 intensities
plus BOS = 256, which starts every image so that p_0 is predicted too.
The stream is x = [BOS, p_0, ..., p_{D-1}] and a row is a window of L+1
tokens: inputs = x[o:o+L], targets = x[o+1:o+L+1]. With the full length
L = D (the real task): o = 0, inputs = [BOS, p_0..p_{D-2}],
targets = [p_0..p_{D-1}]. L < D (smoke tests only) trains on a random
window (o uniform in [0, D-L]) and evaluates the first L intensities;
L > D is an error. Loss unit "dim" (bits per dimension). No padding.

Datasets (`data.dataset`):
  "fashion_mnist": the Debian dataset-fashion-mnist IDX files (default;
      paths must be "");
  "idx": IDX image files at data.train_path / data.eval_path;
  "imagenet": downsampled ImageNet 32/64 npz batches;
  "cifar10": CIFAR-10 python batches.
Paths may be a glob (e.g. ".../train_data_batch_*.npz") or a
comma-separated list; the files are concatenated in sorted order. Every
image is preloaded into memory (ImageNet64 train: about 16 GB).
Train rows visit the images in a fresh permutation each epoch; eval batch
i row r is image (i*B + r) mod N. unigram_bits: entropy of the train
intensity histogram.
"""

from __future__ import annotations

import dataclasses
import glob

import numpy as np

from performer_jax.config import sections
from performer_jax.data import cifar
from performer_jax.data import defaults
from performer_jax.data import files
from performer_jax.data import idx
from performer_jax.data import imagenet
from performer_jax.tasks import base
from performer_jax.tasks import sampling

BOS = 256
VOCAB_SIZE = 257
DATASETS = ("fashion_mnist", "idx", "imagenet", "cifar10")


def flatten(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, H*W*C] in raster order over (H, W, C)."""
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} "
                     f"{images.shape}")
  return images.reshape(images.shape[0], -1)


class ImageSource(sampling.RowSource):
  """Rows from flattened images (see the module docstring)."""

  def __init__(self, pixels: np.ndarray, *, seed: int, train: bool,
               **kwargs):
    super().__init__(**kwargs)
    self.pixels = pixels
    self.train = train
    self.seed = seed
    self.order = sampling.EpochOrder(pixels.shape[0], seed)
    self.excess = pixels.shape[1] - self.seq_len

  def fill_row(self, step, row, out):
    position = step * self.global_batch_size + row
    if self.train:
      image = self.pixels[self.order.index(position)]
    else:
      image = self.pixels[position % self.pixels.shape[0]]
    start = 0
    if self.train and self.excess > 0:
      rng = sampling.row_rng(self.seed, sampling.STREAM_TRAIN_ROW, step, row)
      start = int(rng.integers(0, self.excess + 1))
    stream = np.concatenate([[BOS], image]).astype(np.int32)
    sampling.fill_causal_row(out, stream, start)


@dataclasses.dataclass(frozen=True)
class PixelData(sections.DataConfig):
  """`config.data` of pixel_lm.

  dataset: "fashion_mnist", "idx", "imagenet" or "cifar10" (see the module
    docstring); train_path / eval_path: a glob or comma-separated list
    ("" for fashion_mnist).
  num_eval_batches: 0 = one pass over the eval images.
  max_train_images: 0 = all.
  """
  dataset: str = "fashion_mnist"
  train_path: str = ""
  eval_path: str = ""
  num_eval_batches: int = 0
  max_train_images: int = 0

  def check(self) -> None:
    super().check()
    self._choice("dataset", DATASETS)
    self._str("train_path")
    self._str("eval_path")
    self._int("num_eval_batches", 0)
    self._int("max_train_images", 0)


def variant_data(variant: str) -> PixelData:
  """The data section of a variant: "smoke" models 64-intensity windows of
  Fashion-MNIST, "cpu" the full 784-pixel images, "paper" ImageNet64 (12,288
  tokens) from $PERFORMER_DATA_DIR/imagenet64 (not shipped: put the npz
  batches there)."""
  base.check_variant(variant, "pixel_lm")
  seq_len, batch_size, num_eval_batches = {
      "smoke": (64, 8, 2), "cpu": (784, 8, 8), "paper": (64 * 64 * 3, 32, 0)
  }[variant]
  sizes = dict(seq_len=seq_len, batch_size=batch_size,
               num_eval_batches=num_eval_batches)
  if variant == "paper":
    folder = files.data_dir() / "imagenet64"
    return PixelData(dataset="imagenet",
                     train_path=str(folder / "train_data_batch_*.npz"),
                     eval_path=str(folder / "val_data.npz"), **sizes)
  return PixelData(**sizes)


def _expand(spec: str, key: str) -> list[str]:
  """A glob or comma-separated list of paths -> sorted existing paths."""
  paths = []
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
    if not matches:
      raise FileNotFoundError(f"data.{key}: no file matches {part!r}; it is "
                              f"provided by {defaults.USER_FILE_PROVIDER}")
    paths.extend(matches)
  if not paths:
    raise ValueError(f"data.{key} must name the image file(s)")
  return paths


def load_images(dataset: str, spec: str, key: str) -> np.ndarray:
  """Reads every file of one split; returns uint8 [N, H, W, C]."""
  if dataset == "fashion_mnist":
    if spec:
      raise ValueError(f"data.{key} must be '' for dataset='fashion_mnist' "
                       "(the Debian files); use dataset='idx' for your own")
    return idx.read_fashion_mnist("train" if key == "train_path" else "test")
  reader = {"idx": lambda p: idx.read_idx_images(p),
            "imagenet": lambda p: imagenet.read_imagenet_npz(p)[0],
            "cifar10": lambda p: cifar.read_cifar_batch(p)[0]}[dataset]
  parts = [reader(p) for p in _expand(spec, key)]
  shapes = {part.shape[1:] for part in parts}
  if len(shapes) != 1:
    raise ValueError(f"data.{key}: files hold images of different shapes "
                     f"{sorted(shapes)}")
  return np.concatenate(parts) if len(parts) > 1 else parts[0]


def build(data: PixelData, *, process_index: int = 0,
          process_count: int = 1) -> base.TaskData:
  """Builds pixel_lm from its data section."""
  sampling.local_rows(data.batch_size, process_index, process_count)
  train = flatten(load_images(data.dataset, data.train_path, "train_path"))
  evals = flatten(load_images(data.dataset, data.eval_path, "eval_path"))
  if data.max_train_images:
    train = train[:data.max_train_images]
  if train.shape[1] != evals.shape[1]:
    raise ValueError(f"train images have {train.shape[1]} values, eval images "
                     f"{evals.shape[1]}; they must have the same shape")
  if data.seq_len > train.shape[1]:
    raise ValueError(f"data.seq_len={data.seq_len} exceeds the "
                     f"{train.shape[1]} intensities per image; use seq_len <= "
                     "H*W*C")
  num_eval = sampling.eval_num_batches(evals.shape[0], data.batch_size,
                                       data.num_eval_batches, wrap=True)
  common = dict(global_batch_size=data.batch_size, seq_len=data.seq_len,
                process_index=process_index, process_count=process_count,
                seed=data.seed)
  counts = np.bincount(train.reshape(-1), minlength=256)
  return base.TaskData(
      train=ImageSource(train, train=True, **common),
      eval=ImageSource(evals, train=False, num_batches=num_eval, **common),
      vocab_size=VOCAB_SIZE, causal=True, loss_unit="dim",
      unigram_bits=sampling.entropy_bits(counts))


TASK = base.Task("pixel_lm", PixelData, variant_data, build)
