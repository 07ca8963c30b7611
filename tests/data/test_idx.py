"""Tests for performer_jax.data.idx."""

import gzip
import struct

import numpy as np
import pytest

from performer_jax.data import defaults
from performer_jax.data import idx
from performer_jax.tasks import pixels


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  """Builds an IDX file by hand: magic, big-endian sizes, data."""
  header = bytes([0, 0, type_code, array.ndim])
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_reads_images(tmp_path, compress):
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), np.uint8)
  raw = idx_bytes(images)
  path = tmp_path / "imgs-idx3-ubyte"
  path.write_bytes(gzip.compress(raw) if compress else raw)
  out = idx.read_idx_images(path)
  assert out.shape == (5, 4, 3, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], images)


def test_reads_multibyte_big_endian(tmp_path):
  labels = np.array([[1, -2, 300000], [7, 8, 9]], np.int32)
  path = tmp_path / "ints"
  path.write_bytes(idx_bytes(labels, 0x0C))
  out = idx.read_idx(path)
  np.testing.assert_array_equal(out, labels)
  assert out.dtype.isnative


def test_four_dim_images_keep_channels(tmp_path):
  images = np.arange(2 * 3 * 3 * 2, dtype=np.uint8).reshape(2, 3, 3, 2)
  path = tmp_path / "rgb"
  path.write_bytes(idx_bytes(images))
  np.testing.assert_array_equal(idx.read_idx_images(path), images)


@pytest.mark.parametrize("mutate,message", [
    (lambda raw: b"\x01" + raw[1:], "bad IDX magic number 01000803"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "bad IDX magic number 00000703"),
    (lambda raw: raw[:-1], "file has 63 bytes but its IDX header"),
    (lambda raw: raw + b"\x00", "file has 65 bytes but its IDX header"),
    (lambda raw: raw[:10], "truncated IDX header"),
])
def test_corrupt_files_name_the_file(tmp_path, mutate, message):
  raw = idx_bytes(np.zeros((3, 4, 4), np.uint8))  # 16 + 48 = 64 bytes
  path = tmp_path / "broken-idx3-ubyte"
  path.write_bytes(mutate(raw))
  with pytest.raises(ValueError, match="broken-idx3-ubyte: " + message):
    idx.read_idx_images(path)


def test_non_byte_images_rejected(tmp_path):
  path = tmp_path / "floats"
  path.write_bytes(idx_bytes(np.zeros((2, 2, 2), np.float32), 0x0D))
  with pytest.raises(ValueError, match="floats: IDX images must be unsigned "
                     "bytes"):
    idx.read_idx_images(path)


def test_missing_fashion_mnist_names_package(tmp_path, monkeypatch):
  monkeypatch.setattr(defaults, "FASHION_MNIST_DIR", tmp_path / "none")
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz.*"
                     "dataset-fashion-mnist"):
    pixels.open_images("fashion_mnist", "", "train_path")


def test_real_fashion_mnist_if_installed():
  if not defaults.fashion_mnist("test").is_file():
    pytest.skip("Fashion-MNIST absent: run `bash scripts/setup_data.sh`")
  images = pixels.open_images("fashion_mnist", "", "eval_path")
  assert (len(images), images.shape) == (10_000, (28, 28, 1))
  labels = idx.read_idx(defaults.fashion_mnist("test", "labels"))
  # The test split is balanced: 1,000 images of each of the 10 classes.
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
