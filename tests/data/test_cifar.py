"""Tests for performer_jax.data.cifar (CIFAR-10 python batches)."""

import pickle

import numpy as np
import pytest

from performer_jax.data import cifar


def write_batch(path, data, labels):
  with open(path, "wb") as f:
    pickle.dump({b"batch_label": b"testing", b"data": data,
                 b"labels": list(labels)}, f)


def test_reads_batch(tmp_path):
  data = np.random.default_rng(0).integers(0, 256, (4, 3072), np.uint8)
  path = tmp_path / "data_batch_1"
  write_batch(path, data, [3, 1, 4, 1])
  images, labels = cifar.read_cifar_batch(path)
  assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [3, 1, 4, 1])
  # Channel-major rows: red plane, then green, then blue, each row-major.
  np.testing.assert_array_equal(images[2, :, :, 0].reshape(-1),
                                data[2, :1024])
  np.testing.assert_array_equal(images[2, 5, 7], data[2, [5 * 32 + 7,
                                                          1024 + 5 * 32 + 7,
                                                          2048 + 5 * 32 + 7]])


def test_wrong_width(tmp_path):
  path = tmp_path / "data_batch_2"
  write_batch(path, np.zeros((2, 100), np.uint8), [0, 1])
  with pytest.raises(ValueError, match=r"data_batch_2: b'data' must be "
                     r"\[N, 3072\]"):
    cifar.read_cifar_batch(path)


def test_not_a_dict(tmp_path):
  path = tmp_path / "weird"
  with open(path, "wb") as f:
    pickle.dump([1, 2], f)
  with pytest.raises(ValueError, match="weird: CIFAR batch must be a dict"):
    cifar.read_cifar_batch(path)


def test_garbage(tmp_path):
  path = tmp_path / "garbage"
  path.write_bytes(b"\x00\x01not a pickle")
  with pytest.raises(ValueError, match="garbage: not a CIFAR python batch"):
    cifar.read_cifar_batch(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="test_batch.*provided by"):
    cifar.read_cifar_batch(tmp_path / "test_batch")
