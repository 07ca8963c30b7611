"""Tests for performer_jax.data.imagenet (downsampled ImageNet npz)."""

import numpy as np
import pytest

from performer_jax.data import imagenet


def test_channel_major_layout(tmp_path):
  n, s = 3, 4
  data = np.random.default_rng(0).integers(0, 256, (n, 3 * s * s), np.uint8)
  path = tmp_path / "train_data_batch_1.npz"
  np.savez(path, data=data, labels=np.array([1, 5, 1000]),
           mean=np.zeros(3 * s * s))
  images, labels = imagenet.read_imagenet_npz(path)
  assert images.shape == (n, s, s, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [1, 5, 1000])
  for i in range(n):
    for h in range(s):
      for w in range(s):
        for c in range(3):
          assert images[i, h, w, c] == data[i, c * s * s + h * s + w]


def test_missing_labels_key(tmp_path):
  path = tmp_path / "val_data.npz"
  np.savez(path, data=np.zeros((2, 12), np.uint8))
  with pytest.raises(ValueError, match=r"val_data\.npz: npz batch must hold "
                     r"'data' and 'labels', it holds \['data'\]"):
    imagenet.read_imagenet_npz(path)


def test_non_square_rows(tmp_path):
  path = tmp_path / "odd.npz"
  np.savez(path, data=np.zeros((2, 3 * 10), np.uint8), labels=[0, 1])
  with pytest.raises(ValueError, match=r"odd\.npz: rows of 30 values are not "
                     "3 square channels"):
    imagenet.read_imagenet_npz(path)


def test_label_count_mismatch(tmp_path):
  path = tmp_path / "short.npz"
  np.savez(path, data=np.zeros((2, 12), np.uint8), labels=[0])
  with pytest.raises(ValueError, match=r"short\.npz: 2 images but 1 labels"):
    imagenet.read_imagenet_npz(path)


def test_not_an_npz(tmp_path):
  path = tmp_path / "text.npz"
  path.write_bytes(b"hello")
  with pytest.raises(ValueError, match=r"text\.npz: not a readable npz"):
    imagenet.read_imagenet_npz(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"gone\.npz.*provided by you"):
    imagenet.read_imagenet_npz(tmp_path / "gone.npz")


def test_empty_and_object_batches_are_named(tmp_path):
  empty = tmp_path / "empty.npz"
  np.savez(empty, data=np.zeros((0, 12), np.uint8), labels=np.zeros(0))
  with pytest.raises(ValueError, match=r"empty\.npz: the npz batch holds no "
                     r"images"):
    imagenet.read_imagenet_npz(empty)
  objects = tmp_path / "objects.npz"
  np.savez(objects, data=np.array([np.zeros(3), "x"], dtype=object),
           labels=np.zeros(2))
  with pytest.raises(ValueError, match=r"objects\.npz: 'data' and 'labels' "
                     r"must be plain numeric arrays"):
    imagenet.read_imagenet_npz(objects)
