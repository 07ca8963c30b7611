"""Autoregressive image modelling over 8-bit intensities (`pixel_lm`).

An image uint8 [H, W, C] is the raster-order stream of its D = H*W*C
intensities; vocabulary 257, BOS = 256, x = [BOS, p_0..p_{D-1}]. A row is
inputs = x[o:o+L], targets = x[o+1:o+L+1]: o = 0 at L = D (the real task);
L < D (smoke tests) trains on a random window and evaluates the first L;
L > D is an error. Loss unit "dim", no padding. `data.dataset`:
"fashion_mnist" (default), "idx", "imagenet" (downsampled npz), "cifar10";
paths may be prepared datasets, globs or comma-separated lists.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os

import numpy as np

from performer_jax.data import dataset as prepared
from performer_jax.data import defaults
from performer_jax.data import files
from performer_jax.data import prepare
from performer_jax.schemas import sections
from performer_jax.tasks import base
from performer_jax.tasks import sampling

BOS = 256
VOCAB_SIZE = 257
DATASETS = ("fashion_mnist", "idx", "imagenet", "cifar10")


class ImageSource(sampling.RowSource):
  """Rows from prepared images, each read from disk when needed (see the
  module docstring); `limit` uses only the first images."""

  def __init__(self, images: prepared.Images, *, seed: int, train: bool,
               limit: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.images = images
    self.n = min(len(images), limit) if limit else len(images)
    self.train = train
    self.seed = seed
    self.order = sampling.EpochOrder(self.n, seed)
    self.excess = int(np.prod(images.shape)) - self.seq_len

  def fill_row(self, step, row, out):
    position = step * self.global_batch_size + row
    index = self.order.index(position) if self.train else position % self.n
    image = self.images[index].reshape(-1)  # raster order over (H, W, C)
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


_FORMATS = {"idx": "idx", "imagenet": "imagenet_npz", "cifar10": "cifar"}


def open_images(dataset: str, spec: str, key: str) -> prepared.Images:
  """The images of one split: a prepared dataset, or raw files (a glob or a
  comma-separated list) prepared once into the cache."""
  if dataset == "fashion_mnist":
    if spec:
      raise ValueError(f"data.{key} must be '' for dataset='fashion_mnist' "
                       "(the Debian files); use dataset='idx' for your own")
    spec = str(defaults.fashion_mnist("train" if key == "train_path"
                                      else "test"))
    fmt, provider = "idx", defaults.FASHION_MNIST_PROVIDER
  else:
    fmt, provider = _FORMATS[dataset], defaults.USER_FILE_PROVIDER
  parts = [p.strip() for p in spec.split(",") if p.strip()]
  if not parts:
    raise ValueError(f"data.{key} must name the image file(s) or a prepared "
                     "dataset")
  if len(parts) == 1 and os.path.isdir(parts[0]):
    root = prepare.ensure_prepared(parts[0], fmt, provider=provider)
  else:
    for part in parts:
      if not glob.glob(part):
        raise FileNotFoundError(f"data.{key}: no file matches {part!r}; it "
                                f"is provided by {provider}")
    root = prepare.ensure_prepared(parts, fmt, provider=provider)
  return prepared.Images(root, "all")


def build(data: PixelData, *, process_index: int = 0,
          process_count: int = 1) -> base.TaskData:
  """Builds pixel_lm from its data section."""
  sampling.local_rows(data.batch_size, process_index, process_count)
  train = open_images(data.dataset, data.train_path, "train_path")
  evals = open_images(data.dataset, data.eval_path, "eval_path")
  if train.shape != evals.shape:
    raise ValueError(f"train images are {train.shape}, eval images "
                     f"{evals.shape}; they must have the same shape")
  values = int(np.prod(train.shape))
  if data.seq_len > values:
    raise ValueError(f"data.seq_len={data.seq_len} exceeds the {values} "
                     "intensities per image; use seq_len <= H*W*C")
  num_eval = sampling.eval_num_batches(len(evals), data.batch_size,
                                       data.num_eval_batches, wrap=True)
  common = dict(global_batch_size=data.batch_size, seq_len=data.seq_len,
                process_index=process_index, process_count=process_count,
                seed=data.seed)
  counts = prepared.unigram_counts(train.manifest, "all")
  return base.TaskData(
      train=ImageSource(train, train=True, limit=data.max_train_images,
                        **common),
      eval=ImageSource(evals, train=False, num_batches=num_eval, **common),
      vocab_size=VOCAB_SIZE, causal=True, loss_unit="dim",
      unigram_bits=sampling.entropy_bits(counts))


def encode(text: str) -> np.ndarray:
  """Comma- or space-separated intensities 0-255 -> int32 token ids."""
  try:
    values = [int(v) for v in text.replace(",", " ").split()]
  except ValueError:
    raise ValueError(f"a pixel prompt is a list of intensities 0-255, got "
                     f"{text[:40]!r}") from None
  if any(not 0 <= v <= 255 for v in values):
    raise ValueError("pixel intensities must be in [0, 255]")
  return np.asarray(values, np.int32)


def decode(ids: np.ndarray) -> str:
  return " ".join("BOS" if int(i) == BOS else str(int(i)) for i in ids)


# The image shapes of the datasets whose shape is fixed.
IMAGE_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def image_shape(data: PixelData) -> tuple[int, int, int] | None:
  """`(H, W, C)` of the dataset's images, known without reading them: fixed
  for Fashion-MNIST and CIFAR-10, else the square RGB (or grey) image of
  data.seq_len intensities (ImageNet 32 and 64: 3,072 and 12,288); None
  if seq_len is neither."""
  if data.dataset in IMAGE_SHAPES:
    return IMAGE_SHAPES[data.dataset]
  for channels in (3, 1):
    side = math.isqrt(data.seq_len // channels)
    if side * side * channels == data.seq_len:
      return (side, side, channels)
  return None  # samples are then written as lists of intensities


def io(data: PixelData) -> base.TaskIO:
  return base.TaskIO(vocab_size=VOCAB_SIZE, causal=True, loss_unit="dim",
                     encode=encode, decode=decode, bos=BOS, special=(BOS,),
                     image_shape=image_shape(data))


TASK = base.Task("pixel_lm", PixelData, variant_data, build, io)
